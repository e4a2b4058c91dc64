//! A one-shot monotonic timer as a pollable fd (timerfd): epoll timeouts have
//! millisecond granularity, the capture drain tick needs tens of microseconds.
//!
//! It remembers its deadline so that re-arming it to (about) the deadline it already
//! has, or disarming it when it is not armed, costs no system call: the data-path
//! loops do that after every batch, and in a VM each `timerfd_settime` reprograms the
//! host's timer (a profile at 20k events/s put 8% of the egress thread there).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    time::{Duration, Instant},
};

pub struct Timer {
    fd: OwnedFd,
    deadline: Option<Instant>,
    /// `timerfd_settime` calls made (for tests).
    settimes: u64,
}

impl Timer {
    pub fn new() -> io::Result<Timer> {
        // SAFETY: plain syscall; the fd is checked and then owned.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd from the kernel.
        Ok(Timer {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            deadline: None,
            settimes: 0,
        })
    }

    /// Fires once, `after` from now (re-arming replaces the previous deadline).
    pub fn arm(&mut self, after: Duration) -> io::Result<()> {
        let now = Instant::now();
        // A zero it_value would disarm: round up to 1 ns.
        let after = after.max(Duration::from_nanos(1));
        self.set(libc::timespec {
            tv_sec: after.as_secs() as libc::time_t,
            tv_nsec: after.subsec_nanos() as libc::c_long,
        })?;
        self.deadline = Some(now + after);
        Ok(())
    }

    /// Fires once at `at` (now if it has passed); nothing to do if that is already
    /// the deadline.
    pub fn arm_at(&mut self, at: Instant) -> io::Result<()> {
        if self.deadline == Some(at) {
            return Ok(());
        }
        let now = Instant::now();
        self.arm(at.saturating_duration_since(now))?;
        self.deadline = Some(at);
        Ok(())
    }

    /// Fires about `after` from now: a deadline already set between `after - slack`
    /// and `after` from now is kept as it is.
    pub fn arm_about(&mut self, after: Duration, slack: Duration) -> io::Result<()> {
        if let Some(d) = self.deadline {
            let now = Instant::now();
            let latest = now + after;
            if d <= latest && d + slack >= latest {
                return Ok(());
            }
        }
        self.arm(after)
    }

    pub fn disarm(&mut self) -> io::Result<()> {
        if self.deadline.is_none() {
            return Ok(());
        }
        self.set(libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        })?;
        self.deadline = None;
        Ok(())
    }

    pub fn is_armed(&self) -> bool {
        self.deadline.is_some()
    }

    /// Consumes the expiration after the fd became readable.
    /// When it fires, if armed (a deadline that has passed: it fired, not yet acked).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn ack(&mut self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into a local buffer; EAGAIN just means not expired.
        let _ = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                8,
            )
        };
        self.deadline = None;
    }

    fn set(&mut self, value: libc::timespec) -> io::Result<()> {
        self.settimes += 1;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: valid fd and itimerspec.
        let r =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_after_the_delay() {
        let mut t = Timer::new().unwrap();
        t.arm(Duration::from_micros(200)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let mut buf = [0u8; 8];
        // SAFETY: test read into a local buffer.
        let n = unsafe { libc::read(t.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, 8) };
        assert_eq!(n, 8);
        assert_eq!(u64::from_ne_bytes(buf), 1);
        t.arm(Duration::from_secs(60)).unwrap();
        t.disarm().unwrap();
        assert!(!t.is_armed());
    }

    fn expired(t: &Timer) -> bool {
        let mut buf = [0u8; 8];
        // SAFETY: test read into a local buffer.
        unsafe { libc::read(t.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, 8) == 8 }
    }

    #[test]
    fn unchanged_deadlines_cost_no_system_call() {
        let mut t = Timer::new().unwrap();
        t.disarm().unwrap();
        assert_eq!(t.settimes, 0, "disarming a disarmed timer");
        let at = Instant::now() + Duration::from_secs(60);
        t.arm_at(at).unwrap();
        t.arm_at(at).unwrap();
        assert_eq!(t.settimes, 1, "the same deadline twice");
        t.arm_at(at + Duration::from_millis(1)).unwrap();
        assert_eq!(t.settimes, 2, "a new deadline");
        t.disarm().unwrap();
        t.disarm().unwrap();
        assert_eq!(t.settimes, 3);

        // Within the slack the earlier deadline is kept; past it, or later than
        // wanted, it is replaced.
        let (after, slack) = (Duration::from_millis(200), Duration::from_millis(100));
        t.arm_about(after, slack).unwrap();
        assert_eq!(t.settimes, 4);
        std::thread::sleep(Duration::from_millis(20));
        t.arm_about(after, slack).unwrap();
        assert_eq!(t.settimes, 4, "kept: 20 ms earlier than wanted");
        std::thread::sleep(Duration::from_millis(120));
        t.arm_about(after, slack).unwrap();
        assert_eq!(t.settimes, 5, "replaced: 140 ms earlier than wanted");
        t.arm(Duration::from_secs(60)).unwrap();
        t.arm_about(after, slack).unwrap();
        assert_eq!(t.settimes, 7, "replaced: later than wanted");
    }

    #[test]
    fn a_kept_deadline_still_fires() {
        let mut t = Timer::new().unwrap();
        t.arm_about(Duration::from_millis(2), Duration::from_millis(2))
            .unwrap();
        t.arm_about(Duration::from_millis(2), Duration::from_millis(2))
            .unwrap();
        std::thread::sleep(Duration::from_millis(10));
        assert!(expired(&t));
        t.ack();
        assert!(!t.is_armed());
        // A deadline in the past fires at once.
        t.arm_at(Instant::now() - Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(expired(&t));
    }
}
