//! `rawfs crash`: cut the power of a mount, show what a crash would lose, or write a crash
//! image (docs/crash.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::control::{Client, Command};
use crate::fs::durable::{Keep, Losses};

/// The options of `rawfs crash`.
#[derive(Args, Debug, Clone)]
pub(crate) struct CrashArgs {
    /// The mount point.
    mountpoint: PathBuf,
    /// Which unsynced changes survive: `none` (all are lost) or `random` (each is kept or
    /// lost by a draw seeded with --seed, within what the persistence model allows).
    #[arg(long, value_name = "WHICH", default_value = "none", value_parser = parse_keep)]
    keep: Keep,
    /// Seed of the draws (--keep random, --torn): the same seed gives the same crash.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// A write that was not made durable may survive in part: a prefix ending on a multiple
    /// of BYTES in the file (512, 4096...).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    torn: Option<u64>,
    /// First SIGKILL every process that has a file open on the mount, as a power cut ends
    /// them.
    #[arg(long, conflicts_with_all = ["dry_run", "to"])]
    kill: bool,
    /// Only show what a crash would lose now; change nothing.
    #[arg(long, conflicts_with_all = ["to", "keep", "seed", "torn"])]
    dry_run: bool,
    /// Write the tree the crash would leave into DIR (missing or empty), a crash image,
    /// without changing the mount.
    #[arg(long, value_name = "DIR")]
    to: Option<PathBuf>,
    /// Print what was (or would be) lost as one JSON object.
    #[arg(long)]
    json: bool,
}

fn parse_keep(s: &str) -> Result<Keep, String> {
    match s {
        "none" => Ok(Keep::None),
        "random" => Ok(Keep::Random),
        other => Err(format!("unknown --keep {other:?} (use none or random)")),
    }
}

pub(crate) fn run(a: &CrashArgs) -> Result<ExitCode, String> {
    let mut client = Client::connect(&a.mountpoint)?;
    let to = match &a.to {
        Some(d) => Some(std::path::absolute(d).map_err(|e| format!("--to {}: {e}", d.display()))?),
        None => None,
    };
    let (v, key) = if a.dry_run {
        (client.request(&Command::Unsynced)?, "unsynced")
    } else {
        let cmd = Command::Crash {
            keep: a.keep,
            seed: a.seed,
            torn: a.torn,
            kill: a.kill,
            to: to.clone(),
        };
        (client.request(&cmd)?, "lost")
    };
    let model = v.get("model").and_then(|m| m.as_str()).unwrap_or("?");
    if a.json {
        let mut out = serde_json::Map::new();
        out.insert("model".into(), model.into());
        out.insert(key.into(), v.get(key).cloned().unwrap_or_default());
        println!("{}", serde_json::Value::Object(out));
        return Ok(ExitCode::SUCCESS);
    }
    let losses: Losses = serde_json::from_value(v.get(key).cloned().unwrap_or_default())
        .map_err(|e| format!("the daemon's answer did not parse: {e}"))?;
    print!(
        "{}",
        describe(&a.mountpoint, model, a.dry_run, to.as_deref(), &losses)
    );
    Ok(ExitCode::SUCCESS)
}

fn describe(mnt: &Path, model: &str, dry_run: bool, to: Option<&Path>, l: &Losses) -> String {
    let head = match (dry_run, to) {
        (true, _) if l.is_empty() => {
            format!("nothing unsynced ({model}): a crash now loses nothing\n")
        }
        (true, _) => format!("a crash now ({model}) would lose:\n"),
        (false, Some(dir)) => format!(
            "crash image of {} ({model}) written to {}\n",
            mnt.display(),
            dir.display()
        ),
        (false, None) => format!("crashed {} ({model})\n", mnt.display()),
    };
    let mut s = head;
    if !dry_run && !l.is_empty() {
        s.push_str("lost:\n");
    } else if !dry_run {
        s.push_str("nothing was lost\n");
    }
    for line in l.to_string().lines() {
        s.push_str("  ");
        s.push_str(line);
        s.push('\n');
    }
    s
}
