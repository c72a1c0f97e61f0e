//! An upgrade keeps production counts: a checkpoint written by the previous
//! format (aggregate snapshot version 2, its dedup epoch kept apart, no
//! positions) restores, the run goes on from it, and the first new
//! checkpoint replaces it (with positions, its epoch as a part).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/checkpoint-v2");

fn state_show(dir: &Path, config: &Path) -> String {
    let output = Command::new(binary())
        .args(["state", "show", "-c"])
        .arg(config)
        .current_dir(dir)
        .env("EVENTS_FILE", "b.jsonl")
        .output()
        .unwrap();
    assert_success(&output);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_checkpoint_of_the_previous_format_restores_and_the_run_goes_on_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    for entry in std::fs::read_dir(FIXTURE).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("flowpulse_checkpoint_") {
            std::fs::copy(entry.path(), store.join(&name)).unwrap();
        }
    }
    let config = dir.path().join("pipeline.toml");
    std::fs::copy(Path::new(FIXTURE).join("pipeline.toml"), &config).unwrap();
    let expect: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(FIXTURE).join("expect.json")).unwrap())
            .unwrap();

    // The same events the fixture was made from; it folded the first 55,000 lines.
    let generated = Command::new(binary())
        .args([
            "generate",
            "-n",
            "100000",
            "--seed",
            "7",
            "--in-flight",
            "200",
        ])
        .args(["--duplicates", "0.01", "-o", "all.jsonl"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_success(&generated);
    let all = std::fs::read_to_string(dir.path().join("all.jsonl")).unwrap();
    let mut rest = std::fs::File::create(dir.path().join("b.jsonl")).unwrap();
    for line in all.lines().skip(55_000) {
        writeln!(rest, "{line}").unwrap();
    }
    drop(rest);

    let before = state_show(dir.path(), &config);
    assert!(before.contains("positions unknown"), "{before}");
    assert!(before.contains("54444 events folded"), "{before}");

    let output = run_command(dir.path(), &config)
        .env("EVENTS_FILE", "b.jsonl")
        .output()
        .unwrap();
    assert_success(&output);
    let line = read_lines(&dir.path().join("out.jsonl")).pop().unwrap();
    let doc: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_matches_expectation(&doc["data"], &expect);

    // The first new checkpoint replaced the old one: positions known, the
    // dedup epoch a part of its own, the old epoch key gone.
    let after = state_show(dir.path(), &config);
    assert!(after.contains("aggregate state version 4"), "{after}");
    assert!(after.contains("b.jsonl@"), "{after}");
    let files: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!files.iter().any(|f| f.ends_with("_epoch_0")), "{files:?}");
    assert!(files.iter().any(|f| f.contains("_part_")), "{files:?}");
}
