//! `rawfs explore`: the command line of [`crate::explore`], and its report as text.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::explore::{self, Error, Options, Report};
use crate::fs::durable::Model;

/// The options of `rawfs explore`.
#[derive(Args, Debug, Clone)]
pub(crate) struct ExploreArgs {
    /// The checker: a shell command run in each crash state's directory; exit 0 means the
    /// state is good. It gets RAWFS_CRASH_SEQ, RAWFS_CRASH_STATE and RAWFS_WORKLOAD_STDOUT.
    #[arg(long, value_name = "CHECKER", required_unless_present = "replay")]
    check: Option<String>,
    /// Persistence model: strict or ext4-ordered (docs/crash.md).
    #[arg(long, value_name = "MODEL", default_value = "strict")]
    model: Model,
    /// Torn writes are cut at multiples of this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 512)]
    sector: u64,
    /// Most crash states generated (systematic ones first, then random ones up to this).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    max_states: usize,
    /// Seed of the random states.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// States checked at once (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Rebuild the state with this id (from a report) from a new run of the workload,
    /// which must repeat itself; with --to DIR or --shell.
    #[arg(long, value_name = "ID", requires = "rebuild")]
    replay: Option<String>,
    /// With --replay: write the state into DIR (missing or empty).
    #[arg(long, value_name = "DIR", group = "rebuild")]
    to: Option<PathBuf>,
    /// With --replay: open a shell ($SHELL) in the state, then remove it.
    #[arg(long, group = "rebuild")]
    shell: bool,
    /// The workload and its arguments (after `--`), run once in a fresh mount.
    #[arg(required = true, last = true, value_name = "WORKLOAD")]
    workload: Vec<OsString>,
}

pub(crate) fn run(a: &ExploreArgs) -> ExitCode {
    let usage = |e: Error| {
        eprintln!("rawfs explore: {e}");
        ExitCode::from(2)
    };
    let mut o = Options {
        model: a.model,
        sector: a.sector,
        max_states: a.max_states,
        seed: a.seed,
        jobs: a
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        checker: a.check.clone().unwrap_or_else(|| "true".into()),
        workload: a.workload.clone(),
    };
    if let Err(e) = explore::validate(&mut o) {
        return usage(e);
    }
    let rec = match explore::record(&o) {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    if let Some(id) = &a.replay {
        return match replay(&o, &rec, id, a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => usage(e),
        };
    }
    let report = match explore::explore(&o, &rec) {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    if a.json {
        match serde_json::to_string(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => return usage(Error(format!("cannot encode the report: {e}"))),
        }
    } else {
        print!("{}", text(&o, &report));
    }
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn replay(o: &Options, rec: &explore::Recording, id: &str, a: &ExploreArgs) -> Result<(), Error> {
    let (state, description) = explore::replay(o, rec, id)?;
    let seq: u64 = id
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0);
    let lines = explore::printed_before(rec, seq);
    let write = |dir: &std::path::Path| -> Result<(), Error> {
        state.write(dir).map_err(|e| {
            Error(format!(
                "cannot write the state into {}: {e}",
                dir.display()
            ))
        })
    };
    if let Some(dir) = &a.to {
        write(dir)?;
        eprintln!("state {id} ({description}) written to {}", dir.display());
        if !lines.is_empty() {
            eprintln!("the workload had printed:");
            for l in &lines {
                eprintln!("  {l}");
            }
        }
        return Ok(());
    }
    let tmp = tempfile::Builder::new()
        .prefix("rawfs-state-")
        .tempdir()
        .map_err(|e| Error(format!("cannot create a directory: {e}")))?;
    let dir = tmp.path().join("state");
    write(&dir)?;
    let stdout_file = tmp.path().join("workload-stdout");
    std::fs::write(
        &stdout_file,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .map_err(|e| Error(format!("cannot write {}: {e}", stdout_file.display())))?;
    let shell = std::env::var_os("SHELL").unwrap_or_else(|| "sh".into());
    eprintln!("state {id}: {description}; exit the shell to remove it");
    let _ = std::process::Command::new(shell)
        .current_dir(&dir)
        .env("RAWFS_CRASH_SEQ", seq.to_string())
        .env("RAWFS_CRASH_STATE", &description)
        .env("RAWFS_WORKLOAD_STDOUT", &stdout_file)
        .status();
    Ok(())
}

fn indent(s: &str, prefix: &str) -> String {
    s.lines().map(|l| format!("{prefix}{l}\n")).collect()
}

/// The report as text: counts, then each cause with its first failing state in full.
fn text(o: &Options, r: &Report) -> String {
    let workload: Vec<String> = o
        .workload
        .iter()
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    let mut s = format!(
        "explored `{}` under {}: {} requests, {} crash points\n",
        workload.join(" "),
        r.model,
        r.requests,
        r.points
    );
    s.push_str(&format!(
        "states: {} generated, {} distinct, {} checked in {:.2} s ({:.0} states/s)\n",
        r.generated, r.distinct, r.checked, r.seconds, r.states_per_second
    ));
    if r.skipped > 0 {
        s.push_str(&format!(
            "{} systematic states were not generated: raise --max-states to check them\n",
            r.skipped
        ));
    }
    if r.failures.is_empty() {
        s.push_str("every state passed the checker\n");
        return s;
    }
    s.push_str(&format!(
        "{} failing states, {} causes\n",
        r.failures.len(),
        r.groups.len()
    ));
    for g in &r.groups {
        s.push_str(&format!("\ncause: {}\n", g.cause));
        let Some(f) = r.failures.iter().find(|f| f.id == g.ids[0]) else {
            continue;
        };
        s.push_str(&format!("  state {}: {}\n", f.id, f.state));
        let lost = f.lost.to_string();
        if !lost.is_empty() {
            s.push_str("    lost:\n");
            s.push_str(&indent(&lost, "      "));
        }
        match f.status {
            Some(code) => s.push_str(&format!("    checker exited {code}:\n")),
            None => s.push_str("    checker did not run:\n"),
        }
        s.push_str(&indent(&f.output, "      | "));
        s.push_str("    around the cut:\n");
        for l in &f.excerpt {
            s.push_str(&format!("      {l}\n"));
        }
        if g.ids.len() > 1 {
            let more: Vec<&str> = g.ids[1..].iter().take(8).map(String::as_str).collect();
            let rest = g.ids.len() - 1 - more.len();
            s.push_str(&format!("  also: {}", more.join(" ")));
            if rest > 0 {
                s.push_str(&format!(" and {rest} more"));
            }
            s.push('\n');
        }
    }
    s
}
