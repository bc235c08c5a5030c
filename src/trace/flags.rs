//! Symbolic names for the flag words a request carries: open flags, rename flags, fallocate
//! modes, xattr flags, access masks. Used when a trace is formatted, never on the hot path.

/// O_LARGEFILE as the kernel sets it on every open of a 64-bit process (libc defines it as 0
/// there, since user space never needs to pass it).
#[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
pub const O_LARGEFILE: i32 = 0o400000;
/// O_LARGEFILE as the kernel sets it on every open of a 64-bit process (libc defines it as 0
/// there, since user space never needs to pass it).
#[cfg(not(any(target_arch = "aarch64", target_arch = "arm")))]
pub const O_LARGEFILE: i32 = 0o100000;

/// Open flags as `open(2)` spells them: the access mode first, then each flag, then any bits
/// left over in hex (`O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC`).
pub fn open_flags(flags: i32) -> String {
    let mut parts: Vec<String> = vec![
        match flags & libc::O_ACCMODE {
            libc::O_RDONLY => "O_RDONLY",
            libc::O_WRONLY => "O_WRONLY",
            libc::O_RDWR => "O_RDWR",
            _ => "O_ACCMODE",
        }
        .to_string(),
    ];
    let mut rest = flags & !libc::O_ACCMODE;
    // Composite flags first, so their bits are not also named separately.
    const NAMES: &[(i32, &str)] = &[
        (libc::O_TMPFILE, "O_TMPFILE"),
        (libc::O_SYNC, "O_SYNC"),
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_NOCTTY, "O_NOCTTY"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NONBLOCK, "O_NONBLOCK"),
        (libc::O_DSYNC, "O_DSYNC"),
        (libc::O_ASYNC, "O_ASYNC"),
        (libc::O_DIRECT, "O_DIRECT"),
        (O_LARGEFILE, "O_LARGEFILE"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_NOATIME, "O_NOATIME"),
        (libc::O_CLOEXEC, "O_CLOEXEC"),
        (libc::O_PATH, "O_PATH"),
        (crate::fs::FMODE_EXEC, "FMODE_EXEC"),
    ];
    for &(bit, name) in NAMES {
        if bit != 0 && rest & bit == bit {
            parts.push(name.to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    parts.join("|")
}

/// Parses one open flag name (`O_EXCL`, case-insensitive, `O_` optional) into its bits.
pub fn open_flag_bits(name: &str) -> Option<i32> {
    let upper = name.trim().to_ascii_uppercase();
    let name = upper.strip_prefix("O_").unwrap_or(&upper);
    Some(match name {
        "RDONLY" => libc::O_RDONLY,
        "WRONLY" => libc::O_WRONLY,
        "RDWR" => libc::O_RDWR,
        "CREAT" => libc::O_CREAT,
        "EXCL" => libc::O_EXCL,
        "NOCTTY" => libc::O_NOCTTY,
        "TRUNC" => libc::O_TRUNC,
        "APPEND" => libc::O_APPEND,
        "NONBLOCK" => libc::O_NONBLOCK,
        "DSYNC" => libc::O_DSYNC,
        "SYNC" => libc::O_SYNC,
        "ASYNC" => libc::O_ASYNC,
        "DIRECT" => libc::O_DIRECT,
        "LARGEFILE" => O_LARGEFILE,
        "DIRECTORY" => libc::O_DIRECTORY,
        "NOFOLLOW" => libc::O_NOFOLLOW,
        "NOATIME" => libc::O_NOATIME,
        "CLOEXEC" => libc::O_CLOEXEC,
        "PATH" => libc::O_PATH,
        "TMPFILE" => libc::O_TMPFILE,
        "FMODE_EXEC" => crate::fs::FMODE_EXEC,
        _ => return None,
    })
}

fn named_bits(value: u32, names: &[(u32, &str)], none: &str) -> String {
    let mut parts = Vec::new();
    let mut rest = value;
    for &(bit, name) in names {
        if rest & bit == bit && bit != 0 {
            parts.push(name.to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    if parts.is_empty() {
        none.to_string()
    } else {
        parts.join("|")
    }
}

/// renameat2 flags (`RENAME_NOREPLACE`...), `0` for a plain rename.
pub fn rename_flags(flags: u32) -> String {
    named_bits(
        flags,
        &[
            (libc::RENAME_NOREPLACE, "RENAME_NOREPLACE"),
            (libc::RENAME_EXCHANGE, "RENAME_EXCHANGE"),
            (libc::RENAME_WHITEOUT, "RENAME_WHITEOUT"),
        ],
        "0",
    )
}

/// fallocate modes (`FALLOC_FL_KEEP_SIZE`...), `0` for a plain allocation.
pub fn fallocate_mode(mode: i32) -> String {
    named_bits(
        mode as u32,
        &[
            (libc::FALLOC_FL_KEEP_SIZE as u32, "FALLOC_FL_KEEP_SIZE"),
            (libc::FALLOC_FL_PUNCH_HOLE as u32, "FALLOC_FL_PUNCH_HOLE"),
            (
                libc::FALLOC_FL_COLLAPSE_RANGE as u32,
                "FALLOC_FL_COLLAPSE_RANGE",
            ),
            (libc::FALLOC_FL_ZERO_RANGE as u32, "FALLOC_FL_ZERO_RANGE"),
            (
                libc::FALLOC_FL_INSERT_RANGE as u32,
                "FALLOC_FL_INSERT_RANGE",
            ),
            (
                libc::FALLOC_FL_UNSHARE_RANGE as u32,
                "FALLOC_FL_UNSHARE_RANGE",
            ),
        ],
        "0",
    )
}

/// setxattr flags (`XATTR_CREATE`, `XATTR_REPLACE`), `0` for none.
pub fn xattr_flags(flags: i32) -> String {
    named_bits(
        flags as u32,
        &[
            (libc::XATTR_CREATE as u32, "XATTR_CREATE"),
            (libc::XATTR_REPLACE as u32, "XATTR_REPLACE"),
        ],
        "0",
    )
}

/// access(2) mask (`R_OK|W_OK`), `F_OK` for none.
pub fn access_mask(mask: i32) -> String {
    named_bits(
        mask as u32,
        &[
            (libc::R_OK as u32, "R_OK"),
            (libc::W_OK as u32, "W_OK"),
            (libc::X_OK as u32, "X_OK"),
        ],
        "F_OK",
    )
}

/// A mode as `S_IFREG|0644` (type bits named when present, permission bits in octal).
pub fn mode(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        0 => None,
        libc::S_IFREG => Some("S_IFREG"),
        libc::S_IFDIR => Some("S_IFDIR"),
        libc::S_IFLNK => Some("S_IFLNK"),
        libc::S_IFIFO => Some("S_IFIFO"),
        libc::S_IFSOCK => Some("S_IFSOCK"),
        libc::S_IFCHR => Some("S_IFCHR"),
        libc::S_IFBLK => Some("S_IFBLK"),
        _ => Some("S_IF?"),
    };
    match kind {
        Some(k) => format!("{k}|{:04o}", mode & 0o7777),
        None => format!("{:04o}", mode & 0o7777),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_read_like_strace() {
        let f = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
        assert_eq!(open_flags(f), "O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC");
        assert_eq!(open_flags(libc::O_RDWR | libc::O_SYNC), "O_RDWR|O_SYNC");
        assert_eq!(
            open_flags(libc::O_RDONLY | libc::O_DSYNC),
            "O_RDONLY|O_DSYNC"
        );
        assert_eq!(
            open_flags(libc::O_RDONLY | 0x4000_0000),
            "O_RDONLY|0x40000000"
        );
        assert_eq!(open_flag_bits("o_excl"), Some(libc::O_EXCL));
        assert_eq!(open_flag_bits("EXCL"), Some(libc::O_EXCL));
        assert_eq!(open_flag_bits("O_BOGUS"), None);
    }

    #[test]
    fn other_flag_words() {
        assert_eq!(rename_flags(0), "0");
        assert_eq!(rename_flags(libc::RENAME_NOREPLACE), "RENAME_NOREPLACE");
        assert_eq!(
            fallocate_mode(3),
            "FALLOC_FL_KEEP_SIZE|FALLOC_FL_PUNCH_HOLE"
        );
        assert_eq!(xattr_flags(libc::XATTR_CREATE), "XATTR_CREATE");
        assert_eq!(access_mask(libc::R_OK | libc::X_OK), "R_OK|X_OK");
        assert_eq!(access_mask(0), "F_OK");
        assert_eq!(mode(libc::S_IFREG | 0o644), "S_IFREG|0644");
        assert_eq!(mode(0o1777), "1777");
    }
}
