//! Thread priorities: the control path above the data path. The queue thread runs at real-time
//! priority; relay threads below it (or SCHED_BATCH), so the control path never queues behind
//! the bytes it announced.

/// Runs the queue thread at real-time priority: every control packet of every session is
/// forwarded in its context (the verdict re-injects it), and behind relay threads on the same
/// cores a burst of sessions took twice as long as through the kernel ALG. The loop blocks in
/// `poll`, and the kernel's RT throttling keeps 5 % of each core for others.
pub fn raise_priority(prio: u8) {
    if prio == 0 {
        return;
    }
    let p = libc::sched_param { sched_priority: prio.into() };
    // SCHED_RESET_ON_FORK: the threads this one starts (the relay's, the freshness checks')
    // run at normal priority; inheriting real time, a busy relay could starve the machine
    // SAFETY: sets the calling thread's own scheduling policy with a live parameter.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &p) } == 0 {
        crate::log!("queue thread at real-time priority {prio} (SCHED_FIFO)");
    } else {
        crate::log!("queue thread stays at normal priority ({}; needs CAP_SYS_NICE, or --queue-priority 0)", std::io::Error::last_os_error());
    }
}

/// Sets the calling thread's scheduling for relay work (threads it starts inherit it): at
/// real-time priority `rt` (SCHED_FIFO, below the queue thread's) when `rt` > 0 and allowed —
/// like the kernel's own forwarding, which runs in softirq above every task — else SCHED_BATCH
/// (its wake-ups do not preempt other tasks, it keeps its fair share) at `nice`. Failure leaves
/// the thread as it was.
pub fn lower_priority(rt: u8, nice: i8) {
    if rt > 0 {
        let p = libc::sched_param { sched_priority: rt.into() };
        // SAFETY: sets the calling thread's own policy with a live parameter.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) } == 0 {
            return;
        }
    }
    let p = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets the calling thread's own policy with a live parameter.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &p) };
    if nice == 0 {
        return;
    }
    let tid = nix::unistd::gettid().as_raw() as libc::id_t;
    // SAFETY: setpriority on this thread's own id; no memory is passed.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, libc::c_int::from(nice)) };
}
