//! Thread priorities: the control path above the data path. The queue thread runs at real-time
//! priority; relay threads below it (or SCHED_BATCH), so the control path never queues behind
//! the bytes it announced.

use std::fmt;
use std::sync::OnceLock;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Sets the calling thread's scheduling policy and priority; whether the kernel took them.
fn set_scheduler(policy: libc::c_int, priority: libc::c_int) -> bool {
    let p = libc::sched_param { sched_priority: priority };
    // SAFETY: sets the calling thread's own policy with a live parameter.
    unsafe { libc::sched_setscheduler(0, policy, &p) == 0 }
}

/// The calling thread's scheduling policy (with its flags) and priority.
fn scheduler() -> Option<(libc::c_int, libc::c_int)> {
    let mut p = libc::sched_param { sched_priority: 0 };
    // SAFETY: reads the calling thread's own policy and parameter into a live struct.
    let policy = unsafe { libc::sched_getscheduler(0) };
    // SAFETY: as above.
    (policy >= 0 && unsafe { libc::sched_getparam(0, &mut p) } == 0).then_some((policy, p.sched_priority))
}

/// Runs the queue thread at real-time priority: every control packet of every session is
/// forwarded in its context (the verdict re-injects it), and behind relay threads on the same
/// cores a burst of sessions took twice as long as through the kernel ALG. The loop blocks in
/// `poll`, and the kernel's RT throttling keeps 5 % of each core for others.
pub fn raise_priority(prio: u8) {
    if prio == 0 {
        return;
    }
    // SCHED_RESET_ON_FORK: the threads this one starts (the relay's, the freshness checks')
    // run at normal priority; inheriting real time, a busy relay could starve the machine
    if set_scheduler(libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, prio.into()) {
        crate::log!("queue thread at real-time priority {prio} (SCHED_FIFO)");
    } else {
        crate::log!("queue thread stays at normal priority ({}; needs CAP_SYS_NICE, or --queue-priority 0)", std::io::Error::last_os_error());
    }
}

/// Sets the calling thread's scheduling for relay work (threads it starts inherit it): at
/// real-time priority `rt` (SCHED_FIFO, below the queue thread's) when `rt` > 0 and allowed —
/// like the kernel's own forwarding, which runs in softirq above every task — else SCHED_BATCH
/// (its wake-ups do not preempt other tasks, it keeps its fair share) at `nice`. Failure leaves
/// the thread as it was. Returns whether the thread is now at real-time priority.
pub fn lower_priority(rt: u8, nice: i8) -> bool {
    if rt > 0 && set_scheduler(libc::SCHED_FIFO, rt.into()) {
        return true;
    }
    set_scheduler(libc::SCHED_BATCH, 0);
    if nice != 0 {
        let tid = nix::unistd::gettid().as_raw() as libc::id_t;
        // SAFETY: setpriority on this thread's own id; no memory is passed.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, libc::c_int::from(nice)) };
    }
    false
}

/// Sets the calling thread to normal scheduling (`SCHED_OTHER`, its nice value unchanged: 0 but
/// with `--data-nice`): for long work ftpgate does in a server's place, which then gets a
/// server's share of the cores — the rest of a large cache hit (see
/// [`crate::relay::splice::PROMPT_BYTES`]) — and for the watcher of a kernel-forwarded
/// connection.
///
/// A thread [`confine`]d at real-time priority gets every CPU back.
pub fn normal_priority() {
    set_scheduler(libc::SCHED_OTHER, 0);
    unconfine();
}

/// Drops the calling real-time thread one priority step (at the lowest step, to normal
/// priority), keeping its CPUs: for work that must never hold up the thread that started it on
/// a shared core. The cache writer under the relay: at the relay's own SCHED_FIFO priority on
/// the relay's CPU, a writer copying into the page cache kept the relay from running, and a
/// 1 GiB miss took 3.1 s (the disk's pace) where it took 0.8-1.2 s on two CPUs.
pub fn step_below() {
    match scheduler() {
        Some((libc::SCHED_FIFO, prio)) if prio > 1 => set_scheduler(libc::SCHED_FIFO, prio - 1),
        Some((libc::SCHED_FIFO, _)) => set_scheduler(libc::SCHED_OTHER, 0),
        _ => false,
    };
}

/// `--data-cpus`: where the data threads may run while at real-time priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuChoice {
    /// Every CPU the process may use.
    All,
    /// These CPUs.
    List(Vec<usize>),
}

/// A `--data-cpus` value that is neither `all` nor a CPU list.
#[derive(Debug, PartialEq, Eq)]
pub struct BadCpuList(pub String);

impl fmt::Display for BadCpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: expected `all` or a CPU list such as 1, 1-3 or 1,3-5", self.0)
    }
}

impl std::error::Error for BadCpuList {}

/// Parses `all` or a CPU list (`1`, `1-3`, `0,2-3`), as `taskset -c` takes it.
pub fn parse_cpus(s: &str) -> Result<CpuChoice, BadCpuList> {
    let bad = || BadCpuList(s.to_string());
    if s.trim() == "all" {
        return Ok(CpuChoice::All);
    }
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let (lo, hi) = part.trim().split_once('-').unwrap_or((part.trim(), part.trim()));
        let (lo, hi): (usize, usize) = (lo.trim().parse().map_err(|_| bad())?, hi.trim().parse().map_err(|_| bad())?);
        if lo > hi || hi >= CpuSet::count() {
            return Err(bad());
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(CpuChoice::List(cpus))
}

/// CPUs named in `--data-cpus` that the process may not use.
#[derive(Debug, PartialEq, Eq)]
pub struct UnusableCpus {
    pub named: Vec<usize>,
    pub allowed: Vec<usize>,
}

impl fmt::Display for UnusableCpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data-cpus: CPU {} is not one this process may use (it may use {})", list(&self.named), list(&self.allowed))
    }
}

/// `0,2,3` for display.
pub fn list(cpus: &[usize]) -> String {
    cpus.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
}

/// The CPUs the data threads are confined to while at real-time priority, out of `allowed`
/// (the process's own): `None` = not confined. By default every allowed CPU but the first, when
/// there are at least two: the relay's real-time threads then never hold the last core, where
/// the machine's other tasks (on a router its daemons; in the bench the clients and servers)
/// still get a core at once — with 4 relayed downloads and both cores busy, the NOOP round
/// trips' p99 through ftpgate came nearer the kernel ALG's (see the README).
pub fn data_cpus(choice: Option<&CpuChoice>, allowed: &[usize]) -> Result<Option<Vec<usize>>, UnusableCpus> {
    match choice {
        None if allowed.len() >= 2 => Ok(Some(allowed[1..].to_vec())),
        None | Some(CpuChoice::All) => Ok(None),
        Some(CpuChoice::List(l)) => {
            let named: Vec<usize> = l.iter().copied().filter(|c| !allowed.contains(c)).collect();
            if !named.is_empty() {
                return Err(UnusableCpus { named, allowed: allowed.to_vec() });
            }
            Ok((l.as_slice() != allowed).then(|| l.clone()))
        }
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect(),
        Err(_) => Vec::new(),
    }
}

/// Real-time data threads' CPUs ([`data_cpus`]), ready for [`confine`].
#[derive(Clone, Debug)]
pub struct Confine {
    pub cpus: Vec<usize>,
    to: CpuSet,
    all: CpuSet,
}

impl Confine {
    pub fn new(cpus: Vec<usize>, allowed: &[usize]) -> Confine {
        let set = |l: &[usize]| {
            let mut s = CpuSet::new();
            for &c in l {
                let _ = s.set(c);
            }
            s
        };
        Confine { to: set(&cpus), all: set(allowed), cpus }
    }
}

/// The process's CPUs, once a thread was confined: what [`unconfine`] gives back.
static ALL: OnceLock<CpuSet> = OnceLock::new();

/// Keeps the calling (real-time) thread, and the threads it starts, to `c`'s CPUs until
/// [`normal_priority`] or [`unconfine`].
pub fn confine(c: &Confine) {
    if ALL.set(c.all).is_ok() {
        crate::log!("data threads at real-time priority keep to CPU {} (--data-cpus)", list(&c.cpus));
    }
    let _ = sched_setaffinity(Pid::from_raw(0), &c.to);
}

/// Gives the calling thread every CPU of the process back, if threads were confined: for work
/// at normal priority started from a confined thread.
pub fn unconfine() {
    if let Some(all) = ALL.get() {
        let _ = sched_setaffinity(Pid::from_raw(0), all);
    }
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
    // the policy unchanged, without the flag
    let lifted = match scheduler() {
        Some((policy, prio)) if policy & libc::SCHED_RESET_ON_FORK != 0 => {
            set_scheduler(policy & !libc::SCHED_RESET_ON_FORK, prio).then_some((policy, prio))
        }
        _ => None,
    };
    let spawned = std::thread::Builder::new().name(name.into()).spawn(move || {
        init();
        work();
    });
    if let Some((policy, prio)) = lifted {
        set_scheduler(policy, prio); // the flag set again
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

    #[test]
    fn cpu_lists_parse_as_taskset_takes_them() {
        assert_eq!(parse_cpus("all"), Ok(CpuChoice::All));
        assert_eq!(parse_cpus("1"), Ok(CpuChoice::List(vec![1])));
        assert_eq!(parse_cpus("3,1-2, 2"), Ok(CpuChoice::List(vec![1, 2, 3])));
        for bad in ["", "x", "2-1", "1,", "-1", "1-", "99999"] {
            assert_eq!(parse_cpus(bad), Err(BadCpuList(bad.to_string())), "{bad:?}");
        }
    }

    #[test]
    fn by_default_real_time_data_threads_leave_the_first_cpu_free() {
        assert_eq!(data_cpus(None, &[0, 1]), Ok(Some(vec![1])));
        assert_eq!(data_cpus(None, &[2, 5, 7]), Ok(Some(vec![5, 7])));
        // one CPU: nothing to leave free
        assert_eq!(data_cpus(None, &[3]), Ok(None));
        assert_eq!(data_cpus(Some(&CpuChoice::All), &[0, 1]), Ok(None));
        assert_eq!(data_cpus(Some(&CpuChoice::List(vec![0, 1])), &[0, 1]), Ok(None));
        assert_eq!(data_cpus(Some(&CpuChoice::List(vec![0])), &[0, 1]), Ok(Some(vec![0])));
        let e = data_cpus(Some(&CpuChoice::List(vec![1, 4])), &[0, 1]).unwrap_err();
        assert_eq!(e, UnusableCpus { named: vec![4], allowed: vec![0, 1] });
        assert_eq!(e.to_string(), "data-cpus: CPU 4 is not one this process may use (it may use 0,1)");
    }

    /// One step below a real-time priority; at the lowest step, normal priority. Needs
    /// CAP_SYS_NICE; skipped without.
    #[test]
    fn a_step_below_is_one_real_time_priority_lower() {
        std::thread::spawn(|| {
            if !set_scheduler(libc::SCHED_FIFO, 5) {
                return eprintln!("skipped: no CAP_SYS_NICE");
            }
            step_below();
            assert_eq!(scheduler(), Some((libc::SCHED_FIFO, 4)));
            set_scheduler(libc::SCHED_FIFO, 1);
            step_below();
            assert_eq!(scheduler(), Some((libc::SCHED_OTHER, 0)));
            step_below(); // not real time: unchanged
            assert_eq!(scheduler(), Some((libc::SCHED_OTHER, 0)));
        })
        .join()
        .unwrap();
    }

    /// A confined real-time thread gets every CPU back with normal priority.
    #[test]
    fn a_confined_thread_is_widened_at_normal_priority() {
        let allowed = allowed_cpus();
        if allowed.len() < 2 {
            eprintln!("skipped: one CPU");
            return;
        }
        std::thread::spawn(move || {
            confine(&Confine::new(vec![allowed[1]], &allowed));
            assert_eq!(allowed_cpus(), vec![allowed[1]]);
            normal_priority();
            assert_eq!(allowed_cpus(), allowed);
        })
        .join()
        .unwrap();
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
