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

/// Sets the calling thread to normal scheduling (`SCHED_OTHER`, its nice value unchanged: 0 but
/// with `--data-nice`): for long work ftpgate does in a server's place, which then gets a
/// server's share of the cores — the rest of a large cache hit (see
/// [`crate::relay::splice::PROMPT_BYTES`]) — and for the watcher of a kernel-forwarded
/// connection.
pub fn normal_priority() {
    let p = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets the calling thread's own policy with a live parameter.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &p) };
}

/// Starts a thread for data-path work (a relay job, a freshness check) that begins at the
/// caller's real-time priority instead of normal priority, and first sets its own scheduling
/// with `init` (e.g. [`lower_priority`]).
///
/// The queue thread runs with `SCHED_RESET_ON_FORK`, so the threads it starts begin at normal
/// priority; behind a burst of client processes on the same cores such a thread waited for a
/// core before it could even raise itself — measured in a burst of 200 sessions: a cache hit's
/// RETR held 15 ms (p50) and 36 ms (p90) for freshness checks that took under 1 ms once
/// running. So the flag is lifted for the moment of the spawn (two system calls; the child
/// inherits the real-time policy and runs at once) and set again; every other thread keeps
/// starting at normal priority.
pub fn spawn_prompt(name: &str, init: impl FnOnce() + Send + 'static, work: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    // SAFETY: reads the calling thread's own policy and parameter into a live struct.
    let policy = unsafe { libc::sched_getscheduler(0) };
    let mut p = libc::sched_param { sched_priority: 0 };
    let reset = policy >= 0 && policy & libc::SCHED_RESET_ON_FORK != 0 && unsafe { libc::sched_getparam(0, &mut p) } == 0;
    // SAFETY: sets the calling thread's own policy (unchanged, without the flag) with a live parameter.
    let lifted = reset && unsafe { libc::sched_setscheduler(0, policy & !libc::SCHED_RESET_ON_FORK, &p) } == 0;
    let spawned = std::thread::Builder::new().name(name.into()).spawn(move || {
        init();
        work();
    });
    if lifted {
        // SAFETY: as above, the flag set again.
        unsafe { libc::sched_setscheduler(0, policy, &p) };
    }
    spawned.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> i32 {
        // SAFETY: reads the calling thread's own policy.
        unsafe { libc::sched_getscheduler(0) }
    }

    /// A thread started from a real-time thread with `SCHED_RESET_ON_FORK` begins at real-time
    /// priority (its `init` sees it) and the starter keeps its flag; without the lift it would
    /// begin at normal priority. Needs CAP_SYS_NICE (CI runs as root); skipped without.
    #[test]
    fn a_prompt_thread_starts_at_its_starters_real_time_priority() {
        let t = std::thread::spawn(|| {
            let p = libc::sched_param { sched_priority: 3 };
            // SAFETY: sets this test thread's own policy with a live parameter.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &p) } != 0 {
                eprintln!("skipped: no CAP_SYS_NICE");
                return;
            }
            let plain = std::thread::spawn(policy).join().unwrap();
            assert_eq!(plain, libc::SCHED_OTHER, "a plain thread starts at normal priority");
            let (tx, rx) = std::sync::mpsc::channel();
            spawn_prompt("test", move || tx.send(policy()).unwrap(), || ()).unwrap();
            assert_eq!(rx.recv().unwrap(), libc::SCHED_FIFO, "the prompt thread starts at real time");
            assert_eq!(policy(), libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, "the starter keeps its flag");
        });
        t.join().unwrap();
    }
}
