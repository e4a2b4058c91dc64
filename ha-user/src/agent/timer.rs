//! A one-shot monotonic timer as a pollable fd (timerfd): epoll timeouts have
//! millisecond granularity, the capture drain tick needs tens of microseconds.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    time::Duration,
};

pub struct Timer {
    fd: OwnedFd,
    armed: bool,
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
            armed: false,
        })
    }

    /// Fires once, `after` from now (re-arming replaces the previous deadline).
    pub fn arm(&mut self, after: Duration) -> io::Result<()> {
        // A zero it_value would disarm: round up to 1 ns.
        let after = after.max(Duration::from_nanos(1));
        self.set(libc::timespec {
            tv_sec: after.as_secs() as libc::time_t,
            tv_nsec: after.subsec_nanos() as libc::c_long,
        })?;
        self.armed = true;
        Ok(())
    }

    pub fn disarm(&mut self) -> io::Result<()> {
        self.set(libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        })?;
        self.armed = false;
        Ok(())
    }

    pub fn is_armed(&self) -> bool {
        self.armed
    }

    /// Consumes the expiration after the fd became readable.
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
        self.armed = false;
    }

    fn set(&self, value: libc::timespec) -> io::Result<()> {
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
}
