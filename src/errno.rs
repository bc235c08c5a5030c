//! `Errno`: the error every rawfs operation returns, an errno value with its symbolic name.

use std::fmt;

/// A positive errno value, as the kernel expects in a FUSE reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(i32);

macro_rules! errnos {
    ($($name:ident),* $(,)?) => {
        impl Errno {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                pub const $name: Errno = Errno(libc::$name);
            )*
        }

        /// Every errno rawfs knows by name, in one table for lookups both ways.
        const NAMES: &[(&str, i32)] = &[$((stringify!($name), libc::$name)),*];
    };
}

errnos!(
    EPERM,
    ENOENT,
    ESRCH,
    EINTR,
    EIO,
    ENXIO,
    E2BIG,
    EBADF,
    EAGAIN,
    ENOMEM,
    EACCES,
    EFAULT,
    EBUSY,
    EEXIST,
    EXDEV,
    ENODEV,
    ENOTDIR,
    EISDIR,
    EINVAL,
    ENFILE,
    EMFILE,
    ETXTBSY,
    EFBIG,
    ENOSPC,
    ESPIPE,
    EROFS,
    EMLINK,
    EPIPE,
    ERANGE,
    EDEADLK,
    ENAMETOOLONG,
    ENOLCK,
    ENOSYS,
    ENOTEMPTY,
    ELOOP,
    ENODATA,
    EOVERFLOW,
    EOPNOTSUPP,
    EDQUOT,
    ESTALE,
    ETIMEDOUT,
    ECANCELED,
    ENOTCONN,
    ECONNRESET,
    ENOTTY,
);

impl Errno {
    /// Wraps a raw errno value; zero or negative values become `EIO`.
    pub fn from_raw(code: i32) -> Errno {
        if code > 0 { Errno(code) } else { Errno::EIO }
    }

    /// The raw, positive errno value.
    pub fn code(self) -> i32 {
        self.0
    }

    /// The symbolic name (`"ENOENT"`), or `None` for a value rawfs has no name for.
    pub fn name(self) -> Option<&'static str> {
        NAMES.iter().find(|(_, c)| *c == self.0).map(|(n, _)| *n)
    }

    /// Parses a symbolic name such as `"EIO"` (case-insensitive) or a decimal number.
    pub fn from_name(s: &str) -> Option<Errno> {
        if let Ok(n) = s.parse::<i32>() {
            return (n > 0).then_some(Errno(n));
        }
        let upper = s.to_ascii_uppercase();
        NAMES
            .iter()
            .find(|(n, _)| *n == upper)
            .map(|(_, c)| Errno(*c))
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "errno {}", self.0),
        }
    }
}

impl std::error::Error for Errno {}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(Errno::ENOENT.name(), Some("ENOENT"));
        assert_eq!(Errno::from_name("enospc"), Some(Errno::ENOSPC));
        assert_eq!(Errno::from_name("5"), Some(Errno::EIO));
        assert_eq!(Errno::from_name("EWHATEVER"), None);
        assert_eq!(Errno::from_name("0"), None);
        assert_eq!(Errno::from_raw(-3), Errno::EIO);
        assert_eq!(Errno::from_raw(9999).to_string(), "errno 9999");
    }
}
