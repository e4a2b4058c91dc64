//! Final install failures counted by errno, for metrics and logs. Each installer names
//! the errnos its requests fail with; anything else counts as "other".

use std::{fmt, marker::PhantomData};

/// Most errno names one installer may have.
const MAX_NAMED: usize = 10;

/// The errnos one kind of request is known to fail with, by metric label. Several
/// errnos may share a label (EBUSY and EALREADY mean the same for expectations).
pub trait Errnos {
    const NAMES: &'static [(&'static [i32], &'static str)];
}

/// Failures counted per errno label of `E`, plus "other".
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrnoCounts<E> {
    named: [u64; MAX_NAMED],
    other: u64,
    errnos: PhantomData<E>,
}

impl<E: Errnos> ErrnoCounts<E> {
    fn slot(errno: i32) -> Option<usize> {
        E::NAMES
            .iter()
            .take(MAX_NAMED)
            .position(|(codes, _)| codes.contains(&errno))
    }

    pub fn count(&mut self, errno: i32) {
        match Self::slot(errno) {
            Some(i) => self.named[i] += 1,
            None => self.other += 1,
        }
    }

    /// Failures counted under `errno`'s label ("other" for an errno without one).
    pub fn get(&self, errno: i32) -> u64 {
        Self::slot(errno).map_or(self.other, |i| self.named[i])
    }

    pub fn total(&self) -> u64 {
        self.named.iter().sum::<u64>() + self.other
    }

    /// Every label with its count, in `E`'s order, "other" last.
    pub fn by_name(&self) -> Vec<(&'static str, u64)> {
        E::NAMES
            .iter()
            .take(MAX_NAMED)
            .zip(self.named)
            .map(|((_, name), n)| (*name, n))
            .chain([("other", self.other)])
            .collect()
    }

    pub fn add(&mut self, o: &Self) {
        for (a, b) in self.named.iter_mut().zip(o.named) {
            *a += b;
        }
        self.other += o.other;
    }
}

impl<E: Errnos> fmt::Debug for ErrnoCounts<E> {
    /// Only the labels that counted something.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.by_name().into_iter().filter(|(_, n)| *n > 0))
            .finish()
    }
}

/// Conntrack entry requests (create, update, delete).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryErrnos;

impl Errnos for EntryErrnos {
    const NAMES: &'static [(&'static [i32], &'static str)] = &[
        (&[libc::EEXIST], "EEXIST"),
        (&[libc::ENOENT], "ENOENT"),
        (&[libc::EBUSY], "EBUSY"),
        (&[libc::EINVAL], "EINVAL"),
        (&[libc::ENOMEM], "ENOMEM"),
        (&[libc::EOPNOTSUPP], "EOPNOTSUPP"),
        (&[libc::ENOSPC], "ENOSPC"),
        (&[libc::EPERM], "EPERM"),
    ];
}

/// Expectation requests (create, delete).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpectErrnos;

impl Errnos for ExpectErrnos {
    const NAMES: &'static [(&'static [i32], &'static str)] = &[
        (&[libc::ENOENT], "ENOENT"),
        (&[libc::EOPNOTSUPP], "EOPNOTSUPP"),
        (&[libc::EINVAL], "EINVAL"),
        (&[libc::EBUSY, libc::EALREADY], "EBUSY"),
        (&[libc::EMFILE], "EMFILE"),
        (&[libc::EEXIST], "EEXIST"),
    ];
}

const _: () = assert!(EntryErrnos::NAMES.len() <= MAX_NAMED);
const _: () = assert!(ExpectErrnos::NAMES.len() <= MAX_NAMED);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_label_with_the_rest_as_other() {
        let mut c = ErrnoCounts::<ExpectErrnos>::default();
        for errno in [
            libc::ENOENT,
            libc::EBUSY,
            libc::EALREADY,
            libc::ETIME,
            libc::EIO,
        ] {
            c.count(errno);
        }
        assert_eq!(c.get(libc::ENOENT), 1);
        assert_eq!(c.get(libc::EBUSY), 2, "EALREADY shares EBUSY's label");
        assert_eq!(c.get(libc::EALREADY), 2);
        assert_eq!(c.get(libc::EMFILE), 0);
        assert_eq!(c.get(libc::EIO), 2, "errnos without a label are other");
        assert_eq!(c.total(), 5);
        assert_eq!(
            c.by_name(),
            vec![
                ("ENOENT", 1),
                ("EOPNOTSUPP", 0),
                ("EINVAL", 0),
                ("EBUSY", 2),
                ("EMFILE", 0),
                ("EEXIST", 0),
                ("other", 2)
            ]
        );
        assert_eq!(format!("{c:?}"), r#"{"ENOENT": 1, "EBUSY": 2, "other": 2}"#);
    }

    #[test]
    fn adding_sums_every_label() {
        let mut a = ErrnoCounts::<EntryErrnos>::default();
        let mut b = ErrnoCounts::<EntryErrnos>::default();
        a.count(libc::EEXIST);
        b.count(libc::EEXIST);
        b.count(libc::EPERM);
        b.count(libc::E2BIG);
        a.add(&b);
        assert_eq!(
            (a.get(libc::EEXIST), a.get(libc::EPERM), a.get(libc::E2BIG)),
            (2, 1, 1)
        );
        assert_eq!(a.total(), 4);
        assert_eq!(a.by_name().len(), EntryErrnos::NAMES.len() + 1);
    }
}
