//! `rawfs fault ...`: add, list, remove and clear fault rules of a running mount, and list
//! and release the requests its `hold` rules keep waiting.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Subcommand};
use serde_json::Value;

use crate::cli::outln;
use crate::control::{Client, Command};
use crate::fault::{Action, CorruptHow, Match, Range, Rule, When};

/// The fault subcommands.
// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub(crate) enum FaultCmd {
    /// Add a rule: given as JSON, from a file, or with the options below.
    ///
    /// Example: `rawfs fault add MNT --op read --path '/data/*' --short 1 --times 3`.
    Add(AddArgs),
    /// List the rules with how often each matched and fired.
    List {
        /// The mount point.
        mountpoint: PathBuf,
        /// One JSON object per rule.
        #[arg(long)]
        json: bool,
    },
    /// Remove rules by id (releasing the requests they hold).
    Rm {
        /// The mount point.
        mountpoint: PathBuf,
        /// Rule ids.
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Remove every rule and release every held request.
    Clear {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// List the requests held by `hold` rules.
    Holds {
        /// The mount point.
        mountpoint: PathBuf,
        /// First wait until at least N requests are held.
        #[arg(long, value_name = "N")]
        wait: Option<usize>,
        /// How long --wait waits, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 10_000)]
        timeout: u64,
        /// One JSON object per held request.
        #[arg(long)]
        json: bool,
    },
    /// Let held requests go on: one hold id, every request of a rule, or all.
    #[command(group(ArgGroup::new("which").required(true).args(["hold", "rule", "all"])))]
    Release {
        /// The mount point.
        mountpoint: PathBuf,
        /// A hold id (from `rawfs fault holds`).
        hold: Option<u64>,
        /// Every request held by this rule.
        #[arg(long, value_name = "ID")]
        rule: Option<u64>,
        /// Every held request.
        #[arg(long)]
        all: bool,
    },
}

/// `rawfs fault add`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("action").args([
    "json", "file", "errno", "delay", "short", "corrupt", "enospc_after", "competitor", "hold",
    "kill"
]).required(true)))]
#[command(group(ArgGroup::new("trigger").args(["nth", "after", "times", "probability"])))]
pub(crate) struct AddArgs {
    /// The mount point.
    mountpoint: PathBuf,
    /// The whole rule (or an array of rules) as JSON.
    #[arg(long, value_name = "JSON")]
    json: Option<String>,
    /// Read the rule (or an array of rules) from a JSON file.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,

    /// Match these operations (comma-separated trace names: read,write,create...).
    #[arg(long = "op", value_name = "OPS")]
    ops: Option<String>,
    /// Match paths by glob (`*` within a component, `**` across).
    #[arg(long, value_name = "GLOB")]
    path: Option<String>,
    /// Match requests from this process id.
    #[arg(long)]
    pid: Option<u32>,
    /// Match requests from processes with this command name.
    #[arg(long)]
    comm: Option<String>,
    /// Match requests whose open flags include all of these (comma-separated: O_EXCL,...).
    #[arg(long, value_name = "FLAGS")]
    flags: Option<String>,
    /// Match offsets in this range (`A..B` inclusive, `A..`, `..B`, `N`).
    #[arg(long, value_name = "RANGE", value_parser = Range::parse)]
    offset: Option<Range>,
    /// Match requested sizes in this range.
    #[arg(long, value_name = "RANGE", value_parser = Range::parse)]
    size: Option<Range>,

    /// Fire only on the Nth match.
    #[arg(long, value_name = "N")]
    nth: Option<u64>,
    /// Fire on every match after the first N.
    #[arg(long, value_name = "N")]
    after: Option<u64>,
    /// Fire on the first N matches.
    #[arg(long, value_name = "N")]
    times: Option<u64>,
    /// Fire with this probability (0 to 1), drawn from a generator seeded with --seed.
    #[arg(long, value_name = "P")]
    probability: Option<f64>,
    /// Seed for --probability: the same seed gives the same hits.
    #[arg(long, default_value_t = 0, requires = "probability")]
    seed: u64,

    /// Fail with this errno (EIO, ENOSPC, EACCES...).
    #[arg(long, value_name = "NAME")]
    errno: Option<String>,
    /// Wait this many milliseconds before the operation.
    #[arg(long, value_name = "MS")]
    delay: Option<u64>,
    /// With --delay: wait after the operation instead.
    #[arg(long)]
    delay_after: bool,
    /// Read or write at most N bytes.
    #[arg(long, value_name = "N")]
    short: Option<u64>,
    /// Corrupt the bytes read or stored: flip or zero.
    #[arg(long, value_name = "HOW", value_parser = parse_how)]
    corrupt: Option<CorruptHow>,
    /// With --corrupt: first byte, relative to the request's data [default: 0].
    #[arg(long, value_name = "N")]
    corrupt_at: Option<u64>,
    /// With --corrupt: number of bytes [default: 1].
    #[arg(long, value_name = "N")]
    corrupt_len: Option<u64>,
    /// Let writes store this many more bytes, then fail with ENOSPC.
    #[arg(long, value_name = "BYTES")]
    enospc_after: Option<u64>,
    /// Before a matching create, make the name exist as another process's file.
    #[arg(long)]
    competitor: bool,
    /// With --competitor: the competitor's file content [default: empty].
    #[arg(long, value_name = "TEXT")]
    content: Option<String>,
    /// Keep matching requests waiting until `rawfs fault release`.
    #[arg(long)]
    hold: bool,
    /// Send this signal to the calling process (KILL, TERM...).
    #[arg(long, value_name = "SIGNAL")]
    kill: Option<String>,
}

fn parse_how(s: &str) -> Result<CorruptHow, String> {
    match s {
        "flip" => Ok(CorruptHow::Flip),
        "zero" => Ok(CorruptHow::Zero),
        other => Err(format!("unknown corruption {other:?} (use flip or zero)")),
    }
}

fn split_list(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

impl AddArgs {
    /// The options given that are part of a rule built from options, by name.
    fn rule_options(&self) -> Vec<&'static str> {
        let given = [
            ("--op", self.ops.is_some()),
            ("--path", self.path.is_some()),
            ("--pid", self.pid.is_some()),
            ("--comm", self.comm.is_some()),
            ("--flags", self.flags.is_some()),
            ("--offset", self.offset.is_some()),
            ("--size", self.size.is_some()),
            ("--nth", self.nth.is_some()),
            ("--after", self.after.is_some()),
            ("--times", self.times.is_some()),
            ("--probability", self.probability.is_some()),
            ("--delay-after", self.delay_after),
            ("--corrupt-at", self.corrupt_at.is_some()),
            ("--corrupt-len", self.corrupt_len.is_some()),
            ("--content", self.content.is_some()),
        ];
        given.iter().filter(|g| g.1).map(|g| g.0).collect()
    }

    /// The action option given (clap lets only one through).
    fn action_option(&self) -> &'static str {
        [
            ("--errno", self.errno.is_some()),
            ("--delay", self.delay.is_some()),
            ("--short", self.short.is_some()),
            ("--corrupt", self.corrupt.is_some()),
            ("--enospc-after", self.enospc_after.is_some()),
            ("--competitor", self.competitor),
            ("--hold", self.hold),
            ("--kill", self.kill.is_some()),
        ]
        .iter()
        .find(|a| a.1)
        .map_or("none", |a| a.0)
    }

    /// Options that would be silently ignored are errors: a rule must be what was asked for.
    fn check(&self) -> Result<(), String> {
        let whole = if self.json.is_some() {
            Some("--json")
        } else if self.file.is_some() {
            Some("--file")
        } else {
            None
        };
        if let Some(whole) = whole {
            let extra = self.rule_options();
            if !extra.is_empty() {
                return Err(format!(
                    "{whole} gives the whole rule, so {} would be ignored: put {} in the \
                     JSON rule (\"match\", \"when\", \"action\"), or leave {whole} out",
                    extra.join(", "),
                    if extra.len() == 1 { "it" } else { "them" }
                ));
            }
            return Ok(());
        }
        let action = self.action_option();
        let belongs = [
            ("--delay-after", self.delay_after, "--delay"),
            ("--corrupt-at", self.corrupt_at.is_some(), "--corrupt"),
            ("--corrupt-len", self.corrupt_len.is_some(), "--corrupt"),
            ("--content", self.content.is_some(), "--competitor"),
        ];
        for (option, given, owner) in belongs {
            if given && action != owner {
                return Err(format!(
                    "{option} goes with {owner}, but this rule's action is {action}"
                ));
            }
        }
        Ok(())
    }

    fn rules(&self) -> Result<Vec<Rule>, String> {
        self.check()?;
        if let Some(json) = &self.json {
            return crate::fault::parse_rules(json);
        }
        if let Some(file) = &self.file {
            return crate::fault::load_rules(file);
        }
        let action = if let Some(e) = &self.errno {
            Action::Errno(e.clone())
        } else if let Some(ms) = self.delay {
            Action::Delay {
                ms,
                after: self.delay_after,
            }
        } else if let Some(n) = self.short {
            Action::Short(n)
        } else if let Some(how) = self.corrupt {
            Action::Corrupt {
                how,
                at: self.corrupt_at.unwrap_or(0),
                len: self.corrupt_len.unwrap_or(1),
            }
        } else if let Some(n) = self.enospc_after {
            Action::EnospcAfter(n)
        } else if self.competitor {
            Action::Competitor {
                content: self.content.clone().unwrap_or_default(),
                uid: 0,
                gid: 0,
            }
        } else if self.hold {
            Action::Hold
        } else if let Some(sig) = &self.kill {
            Action::Kill(sig.clone())
        } else {
            return Err("no action given".into());
        };
        let when = match (self.nth, self.after, self.times, self.probability) {
            (Some(n), ..) => When::Nth(n),
            (_, Some(n), ..) => When::After(n),
            (_, _, Some(n), _) => When::Times(n),
            (.., Some(p)) => When::Probability { p, seed: self.seed },
            _ => When::Always,
        };
        Ok(vec![Rule {
            id: None,
            matches: Match {
                ops: split_list(&self.ops),
                path: self.path.clone(),
                pid: self.pid,
                comm: self.comm.clone(),
                flags: split_list(&self.flags),
                offset: self.offset,
                size: self.size,
            },
            when,
            action,
        }])
    }
}

fn ids(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Runs one `rawfs fault` subcommand.
pub(crate) fn run(cmd: FaultCmd) -> Result<ExitCode, String> {
    match cmd {
        FaultCmd::Add(args) => {
            let rules = args.rules()?;
            let mut c = Client::connect(&args.mountpoint)?;
            let v = c.request(&Command::FaultAdd { rules })?;
            outln!("{}", ids(&v, "ids"));
        }
        FaultCmd::List { mountpoint, json } => {
            let v = Client::connect(&mountpoint)?.request(&Command::FaultList)?;
            for r in v
                .get("rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if json {
                    outln!("{r}");
                } else {
                    let mut rule = r.clone();
                    let (id, matched, hits) = match rule.as_object_mut() {
                        Some(m) => (m.remove("id"), m.remove("matched"), m.remove("hits")),
                        None => (None, None, None),
                    };
                    let show = |v: Option<Value>| v.map(|v| v.to_string()).unwrap_or_default();
                    outln!(
                        "rule {}: matched {}, fired {}: {rule}",
                        show(id),
                        show(matched),
                        show(hits)
                    );
                }
            }
        }
        FaultCmd::Rm {
            mountpoint,
            ids: which,
        } => {
            Client::connect(&mountpoint)?.request(&Command::FaultRemove { ids: which })?;
        }
        FaultCmd::Clear { mountpoint } => {
            let v = Client::connect(&mountpoint)?.request(&Command::FaultClear)?;
            let n = v.get("cleared").and_then(Value::as_u64).unwrap_or(0);
            eprintln!("removed {n} rule{}", if n == 1 { "" } else { "s" });
        }
        FaultCmd::Holds {
            mountpoint,
            wait,
            timeout,
            json,
        } => {
            let cmd = Command::Holds {
                wait_for: wait,
                timeout_ms: Some(timeout),
            };
            let mut c = Client::connect(&mountpoint)?;
            // The daemon answers once the requests are held, or after --timeout.
            c.set_timeout(Some(
                std::time::Duration::from_millis(timeout) + crate::control::answer_timeout()?,
            ))?;
            let v = c.request(&cmd)?;
            let held = v
                .get("holds")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for h in &held {
                if json {
                    outln!("{h}");
                } else {
                    let s = |k: &str| h.get(k).map(|x| x.to_string()).unwrap_or_default();
                    outln!(
                        "hold {}: rule {}, #{} [{} {}] {}({}) waiting {} ms",
                        s("hold"),
                        s("rule"),
                        s("seq"),
                        s("pid"),
                        h.get("comm").and_then(Value::as_str).unwrap_or(""),
                        h.get("op").and_then(Value::as_str).unwrap_or(""),
                        s("path"),
                        s("waited_ms")
                    );
                }
            }
            if let Some(n) = wait {
                if held.len() < n {
                    return Err(format!(
                        "only {} requests held after {timeout} ms",
                        held.len()
                    ));
                }
            }
        }
        FaultCmd::Release {
            mountpoint,
            hold,
            rule,
            all,
        } => {
            let v = Client::connect(&mountpoint)?.request(&Command::Release { hold, rule, all })?;
            outln!("{}", ids(&v, "released"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
