//! What a run needs before it measures: Debian packages, passthrough_ll built from the
//! libfuse3-dev example sources, and the rawfs binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sys::{self, Result, bail, fail, log, run};

/// The packages a run uses: fio, the C toolchain and libfuse for passthrough_ll.
const PACKAGES: [&str; 6] = [
    "fio",
    "gcc",
    "libc6-dev",
    "pkg-config",
    "fuse3",
    "libfuse3-dev",
];

/// Installs the missing packages with apt-get; `apt-get update` runs only if the install
/// fails without it.
pub fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .into_iter()
        .filter(|p| {
            sys::first_line(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    log(format!(
        "installing missing packages: {}",
        missing.join(" ")
    ));
    let install = || {
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    if run(&mut install()).is_err() {
        sys::check_signal()?;
        log("install failed, running apt-get update and retrying");
        run(Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        run(&mut install())?;
    }
    Ok(())
}

/// Decompresses a gzip file with `gzip -dc`.
fn gunzip(src: &Path, dst: &Path) -> Result<()> {
    let out = fs::File::create(dst).map_err(|e| fail(format!("create {}: {e}", dst.display())))?;
    let mut cmd = Command::new("gzip");
    cmd.arg("-dc").arg(src).stdout(out);
    let status = cmd
        .status()
        .map_err(|e| fail(format!("{}: cannot start: {e}", sys::describe(&cmd))))?;
    sys::check_signal()?;
    if !status.success() {
        return bail(format!("{} failed ({status})", sys::describe(&cmd)));
    }
    Ok(())
}

/// Builds passthrough_ll into `out_dir` from the libfuse3-dev example sources (copied, or
/// decompressed, into `out_dir/passthrough_ll-src`); returns the binary's path.
pub fn build_passthrough(out_dir: &Path) -> Result<PathBuf> {
    let mut ex = PathBuf::from("/usr/share/doc/libfuse3-dev/examples");
    let src = out_dir.join("passthrough_ll-src");
    sys::mkdir_p(&src)?;
    if !ex.join("passthrough_ll.c").exists() && !ex.join("passthrough_ll.c.gz").exists() {
        let listing = sys::stdout_lines(Command::new("dpkg").args(["-L", "libfuse3-dev"]));
        let found = listing
            .iter()
            .find(|l| l.ends_with("/passthrough_ll.c") || l.ends_with("/passthrough_ll.c.gz"))
            .ok_or_else(|| fail("passthrough_ll.c not found in libfuse3-dev"))?;
        ex = Path::new(found)
            .parent()
            .unwrap_or(Path::new("/"))
            .to_path_buf();
    }
    for f in ["passthrough_ll.c", "passthrough_helpers.h"] {
        let (plain, gz) = (ex.join(f), ex.join(format!("{f}.gz")));
        if plain.exists() {
            fs::copy(&plain, src.join(f))
                .map_err(|e| fail(format!("cp {}: {e}", plain.display())))?;
        } else if gz.exists() {
            gunzip(&gz, &src.join(f))?;
        } else {
            return bail(format!("{} not found", plain.display()));
        }
    }
    let bin = out_dir.join("passthrough_ll");
    log(format!(
        "compiling {} from {}",
        bin.display(),
        ex.join("passthrough_ll.c").display()
    ));
    let flags = sys::output(Command::new("pkg-config").args(["--cflags", "--libs", "fuse3"]))?;
    run(Command::new("gcc")
        .arg("-O2")
        .arg("-o")
        .arg(&bin)
        .arg(src.join("passthrough_ll.c"))
        .args(sys::words(&flags)))?;
    Ok(bin)
}

/// The rawfs binary: $RAWFS if set (it must be an executable file), or else the one
/// `cargo build --release` makes in the repository root.
pub fn rawfs_binary(repo_root: &Path) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RAWFS").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !is_executable(&p) {
            return bail(format!("RAWFS={} is not an executable file", p.display()));
        }
        return Ok(p);
    }
    log(format!(
        "cargo build --release (in {})",
        repo_root.display()
    ));
    run(Command::new("cargo")
        .args(["build", "--release"])
        .current_dir(repo_root))?;
    let p = repo_root.join("target/release/rawfs");
    if !is_executable(&p) {
        return bail(format!("{} was not built", p.display()));
    }
    Ok(p)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The version of fio (`fio --version`).
pub fn fio_version() -> Result<String> {
    Ok(sys::output(Command::new("fio").arg("--version"))?
        .trim()
        .to_string())
}

/// libfuse's version (`pkg-config --modversion fuse3`), or "unknown".
pub fn libfuse_version() -> String {
    sys::first_line(Command::new("pkg-config").args(["--modversion", "fuse3"]))
        .unwrap_or_else(|| "unknown".into())
}

/// Whether /dev/fuse is a character device.
pub fn have_dev_fuse() -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs::metadata("/dev/fuse").is_ok_and(|m| m.file_type().is_char_device())
}
