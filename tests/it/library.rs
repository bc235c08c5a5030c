//! The library and socket readers of the trace: every request answered before a read is in
//! what the read returns, through `TempMount` and through the control socket, with other
//! requests in flight and with requests held by a fault rule; and the socket's `check` command.

use std::fs;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rawfs::TempMount;
use rawfs::control::{Client, Command};
use rawfs::fault::parse_rules;
use rawfs::trace::{Event, Op};
use serde_json::Value;

use crate::mount_or_skip;

/// Rounds of the completeness tests: each does its syscalls and reads at once, so a read that
/// ran ahead of the collector would miss them in some round.
const ROUNDS: usize = 300;

/// The events, one text line each, for failure messages.
fn dump(events: &[Event]) -> String {
    events
        .iter()
        .map(rawfs::trace::format::text_line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Requests from another thread all along (lookups of missing names), so that other lanes
/// are busy and requests are answered while the reads run. Stops when dropped.
struct Noise {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Noise {
    fn start(m: &TempMount) -> Noise {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, dir) = (stop.clone(), m.path().to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let _ = fs::symlink_metadata(dir.join(format!("noise-{i}")));
                i += 1;
                // Often enough to overlap the reads, not so often that they drown in events.
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        Noise {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Noise {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Makes directory `d{round}` and writes 8 bytes to `f` (at offset 8*round): a mkdir and a
/// write, both answered when this returns. Returns the directory's trace path.
fn syscalls(m: &TempMount, f: &mut fs::File, round: usize) -> String {
    let name = format!("d{round}");
    fs::create_dir(m.join(&name)).expect("mkdir");
    f.write_all(format!("{round:08}").as_bytes())
        .expect("write");
    format!("/{name}")
}

/// Asserts that `events` hold round `round`'s mkdir and its 8-byte write at offset 8*round.
fn assert_round(events: &[Event], round: usize, dir: &str) {
    let mkdir = events
        .iter()
        .any(|e| e.op == Op::Mkdir && e.path.as_deref() == Some(dir) && e.errno.is_none());
    let write = events
        .iter()
        .any(|e| e.op == Op::Write && e.offset == Some(8 * round as i64) && e.returned == Some(8));
    assert!(
        mkdir && write,
        "round {round}: mkdir {dir} found: {mkdir}, write found: {write}; trace:\n{}",
        dump(events)
    );
}

#[test]
fn a_tempmount_read_holds_every_request_answered_before_it() {
    let m = mount_or_skip!();
    let store = m.trace().expect("recording is on").clone();
    let _noise = Noise::start(&m);
    let mut f = fs::File::create(m.join("log")).expect("create");
    let mut last = 0;
    for round in 0..ROUNDS {
        let dir = syscalls(&m, &mut f, round);
        let (events, _) = store.since(last);
        assert_round(&events, round, &dir);
        last = events.iter().map(|e| e.seq).max().unwrap_or(last);
    }
}

#[test]
fn a_socket_trace_holds_every_request_answered_before_it() {
    let m = mount_or_skip!();
    let _noise = Noise::start(&m);
    let mut client = Client::connect(m.path()).expect("connect");
    let mut f = fs::File::create(m.join("log")).expect("create");
    let mut last = 0;
    for round in 0..ROUNDS {
        let dir = syscalls(&m, &mut f, round);
        let mut events = Vec::new();
        client
            .trace(last, false, |e| {
                events.push(e);
                true
            })
            .expect("trace");
        assert_round(&events, round, &dir);
        last = events.iter().map(|e| e.seq).max().unwrap_or(last);
    }
}

#[test]
fn a_held_request_does_not_hold_up_a_read_of_the_others() {
    let m = mount_or_skip!();
    fs::write(m.join("held"), b"data").expect("write");
    let rule = parse_rules(r#"{"match": {"ops": ["read"], "path": "/held"}, "action": "hold"}"#)
        .expect("rule");
    let ids = m.faults().add(rule).expect("add rule");
    // A read holds no directory lock, so the syscalls below go on while it waits.
    let held_file = m.join("held");
    let holder = std::thread::spawn(move || fs::read(held_file));
    assert_eq!(
        m.faults().holds.wait_for(1, Duration::from_secs(10)).len(),
        1,
        "the read was not held"
    );
    let mut client = Client::connect(m.path()).expect("connect");
    let mut f = fs::File::create(m.join("log")).expect("create");
    let is_held_read = |e: &Event| e.op == Op::Read && e.path.as_deref() == Some("/held");
    for round in 0..20 {
        let dir = syscalls(&m, &mut f, round);
        let t = Instant::now();
        let (events, _) = m.trace().expect("recording is on").since(0);
        assert_round(&events, round, &dir);
        let mut streamed = Vec::new();
        client
            .trace(0, false, |e| {
                streamed.push(e);
                true
            })
            .expect("trace");
        assert_round(&streamed, round, &dir);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "reads took {:?} with a request held",
            t.elapsed()
        );
        // The held read is not answered, so it is in neither.
        assert!(!events.iter().chain(&streamed).any(is_held_read));
    }
    // Removing the rule releases the read, and the reads after it are not held.
    assert!(m.faults().remove(&ids).is_empty());
    assert_eq!(holder.join().expect("holder").expect("held read"), b"data");
    let (events, _) = m.trace().expect("recording is on").since(0);
    assert!(
        events.iter().any(is_held_read),
        "the released read is missing; trace:\n{}",
        dump(&events)
    );
}

/// Sends `command` and returns the answer (an error if it is not ok).
fn ask(client: &mut Client, command: Command) -> Result<Value, String> {
    client.request(&command)
}

#[test]
fn the_socket_check_command_answers_findings_and_names_unknown_checks() {
    let m = mount_or_skip!();
    // A check-then-create: stat, then create without O_EXCL.
    crate::common::python(
        m.path(),
        "import os\n\
         if not os.path.exists('app.pid'):\n\
         \x20   with open('app.pid', 'w') as f: f.write('1')\n\
         fd = os.open('lock', os.O_WRONLY | os.O_CREAT | os.O_EXCL)\n\
         os.close(fd)\n",
        &[],
    );
    let mut client = Client::connect(m.path()).expect("connect");
    let all = ask(
        &mut client,
        Command::Check {
            only: None,
            ignore: vec![],
        },
    )
    .expect("check");
    let findings = all["findings"].as_array().expect("findings");
    let ctc = findings
        .iter()
        .find(|f| f["check"] == "check-then-create")
        .unwrap_or_else(|| panic!("no check-then-create in {all}"));
    assert_eq!(ctc["severity"], "warning");
    assert!(
        ctc["message"].as_str().unwrap().contains("/app.pid"),
        "{ctc}"
    );
    assert_eq!(ctc["seqs"].as_array().map(Vec::len), Some(2), "{ctc}");
    assert!(
        findings
            .iter()
            .any(|f| f["check"] == "exclusive-create" && f["severity"] == "info"),
        "{all}"
    );

    let only = ask(
        &mut client,
        Command::Check {
            only: Some(vec!["exclusive-create".into()]),
            ignore: vec![],
        },
    )
    .expect("check --only");
    let names: Vec<&Value> = only["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["check"])
        .collect();
    assert!(
        !names.is_empty() && names.iter().all(|n| *n == "exclusive-create"),
        "{only}"
    );

    let ignored = ask(
        &mut client,
        Command::Check {
            only: None,
            ignore: vec!["check-then-create".into(), "exclusive-create".into()],
        },
    )
    .expect("check --ignore");
    assert!(
        ignored["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["check"] != "check-then-create" && f["check"] != "exclusive-create"),
        "{ignored}"
    );

    let err = ask(
        &mut client,
        Command::Check {
            only: Some(vec!["dir-not-synced".into()]),
            ignore: vec![],
        },
    )
    .unwrap_err();
    assert!(
        err.contains("\"dir-not-synced\"") && err.contains("dir-not-fsynced"),
        "{err}"
    );
    // An unknown name in `ignore` is refused too.
    let err = ask(
        &mut client,
        Command::Check {
            only: None,
            ignore: vec!["nope".into()],
        },
    )
    .unwrap_err();
    assert!(err.contains("\"nope\""), "{err}");
}

#[test]
fn query_errors_show_what_was_looked_for_and_the_trace_around_it() {
    let m = mount_or_skip!();
    fs::write(m.join("a"), b"1").expect("write");
    fs::write(m.join("b"), b"2").expect("write");
    let err = m
        .events()
        .op(Op::Unlink)
        .path("/a")
        .one()
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("expected exactly one request, found none (looking for: unlink, path /a)"),
        "{err}"
    );
    // Nothing matched: the end of the trace is shown, the writes among it.
    assert!(err.contains("write(\"/b\""), "{err}");
    assert!(!err.contains("\n> "), "{err}");
    let err = m.events().op(Op::Write).none().unwrap_err().to_string();
    assert!(err.starts_with("expected no request, found 2"), "{err}");
    assert_eq!(err.matches("\n> ").count(), 2, "{err}");
    // A glob, and the typed flags.
    let creates = m.events().op(Op::Create).path("/*").all();
    assert_eq!(creates.len(), 2);
    assert!(creates.iter().all(|c| {
        c.flags
            .contains(rawfs::OFlag::WRONLY | rawfs::OFlag::CREAT | rawfs::OFlag::TRUNC)
    }));
    assert!(
        m.events()
            .path("/a")
            .errno(rawfs::Errno::ENOENT)
            .first()
            .is_ok()
    );
    let bad = m.events().path("/a[").one().unwrap_err().to_string();
    assert!(bad.contains("/a["), "{bad}");
}

#[test]
fn a_fault_guard_removes_its_rule_also_when_the_test_fails() {
    let m = mount_or_skip!();
    fs::write(m.join("held"), b"data").expect("write");
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let rule = m
            .fault(r#"{"match": {"ops": ["read"], "path": "/held"}, "action": "hold"}"#)
            .expect("rule");
        let file = m.join("held");
        let reader = std::thread::spawn(move || fs::read(file));
        let held = rule.wait_held(1, Duration::from_secs(10));
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(held[0].path.as_deref(), Some("/held"));
        std::mem::forget(reader);
        panic!("an assertion of the test fails while the read is held");
    }));
    assert!(unwound.is_err());
    // The guard was dropped while unwinding: no rule left, the read went on.
    assert!(m.faults().list().is_empty());
    assert_eq!(fs::read(m.join("held")).expect("read"), b"data");
    let err = m
        .fault(r#"[{"action": "hold"}, {"action": "hold"}]"#)
        .unwrap_err();
    assert!(err.contains("one rule"), "{err}");
}
