//! Runs every shell example in docs/*.md, so the documentation cannot rot.
//!
//! A ```` ```sh ```` block is run with `sh -e`, with the `rawfs` under test first on PATH, in a
//! scratch directory that the blocks of one document share, in order (so an example can use
//! the scripts an earlier one wrote). If the next block is a ```` ```text ```` block, it is
//! the exact stdout the example must print.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One example: where it is, the script, and the stdout it must print (if given).
#[derive(Debug)]
struct Example {
    origin: String,
    script: String,
    expected: Option<String>,
}

/// Extracts the examples of one markdown document.
fn examples(path: &Path) -> Vec<Example> {
    let text = std::fs::read_to_string(path).expect("read doc");
    let mut blocks: Vec<(usize, String, String)> = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let mut body = String::new();
            for (_, l) in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            blocks.push((n + 1, lang.trim().to_string(), body));
        }
    }
    let mut out = Vec::new();
    for (i, (line, lang, body)) in blocks.iter().enumerate() {
        if lang != "sh" {
            continue;
        }
        let expected = blocks
            .get(i + 1)
            .filter(|b| b.1 == "text")
            .map(|b| b.2.clone());
        out.push(Example {
            origin: format!("{}:{line}", path.display()),
            script: body.clone(),
            expected,
        });
    }
    out
}

fn doc_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("docs/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shell_example_in_docs_runs_and_prints_what_it_shows() {
    if crate::common::mount().is_none() {
        return;
    }
    let bin_dir = Path::new(crate::common::rawfs_bin())
        .parent()
        .expect("bin dir")
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let docs: Vec<Vec<Example>> = doc_files().iter().map(|f| examples(f)).collect();
    let count: usize = docs.iter().map(Vec::len).sum();
    assert!(count >= 3, "expected examples in docs/, found {count}");
    for doc in docs {
        let scratch = tempfile::tempdir().expect("scratch dir");
        run_examples(doc, scratch.path(), &path);
    }
}

/// Runs one document's examples in order in `scratch`, with `path` as PATH.
fn run_examples(doc: Vec<Example>, scratch: &Path, path: &str) {
    let _cleanup = UnmountUnder(scratch.to_path_buf());
    for ex in doc {
        let out = Command::new("sh")
            .arg("-e")
            .arg("-c")
            .arg(&ex.script)
            .current_dir(scratch)
            .env("PATH", path)
            .env("RAWFS_RUNTIME_DIR", scratch)
            .env("TMPDIR", scratch)
            .output()
            .expect("run sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "example at {} failed ({}):\n{}\nstdout:\n{stdout}\nstderr:\n{}",
            ex.origin,
            out.status,
            ex.script,
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(expected) = &ex.expected {
            assert_eq!(
                &stdout, expected,
                "example at {} printed something else",
                ex.origin
            );
        }
    }
}

/// Detaches every mount under a directory when dropped: an example that fails half way
/// (examples mount with `mktemp -d`, under TMPDIR, which is the scratch directory) leaves
/// nothing mounted behind, even when the assertion that reports it panics.
struct UnmountUnder(PathBuf);

impl Drop for UnmountUnder {
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
            if Path::new(m).starts_with(&self.0) {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
}

#[test]
fn the_extractor_pairs_examples_with_their_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = dir.path().join("x.md");
    std::fs::write(
        &doc,
        "text\n```sh\necho a\n```\n\n```text\na\n```\n```sh\ntrue\n```\n",
    )
    .expect("write");
    let ex = examples(&doc);
    assert_eq!(ex.len(), 2);
    assert_eq!(ex[0].script, "echo a\n");
    assert_eq!(ex[0].expected.as_deref(), Some("a\n"));
    assert_eq!(ex[1].expected, None);
}
