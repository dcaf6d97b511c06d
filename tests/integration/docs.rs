/*!
The manual pages in `man/` must agree with the code they describe.

- `outq.conf(5)` documents exactly the keys of `outq_spool::config::KEYS`,
  each as a `.It Cm key` item of its KEYS section, and exactly the keys of
  `outq::config::RUNNER_KEYS` in its RUNNER KEYS section, and exactly
  those of `outq::config::ADDRESS_KEYS` in its ADDRESS KEYS section;
- `outq-enqueue(8)` lists exactly the codes of `outq_spool::exit::Code::ALL`
  as `.It N` items of its EXIT STATUS section;
- `outq-spool(5)` has a row `.It Pa NAME Ta OWNER Ta MODE Ta ...` for every
  path of `outq_spool::layout::PARTS`, with its group and mode;
- every page has the sections a reader looks for, and `mandoc -Tlint
  -Wwarning` finds nothing in it. Without mandoc that check prints
  `SKIPPED (mandoc not installed)`, and fails instead when
  `OUTQ_REQUIRE_PRIVILEGED=1` (as CI sets it).
*/

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use outq::config::{ADDRESS_KEYS, RUNNER_KEYS};
use outq_spool::config::{DEFAULT_SPOOL, KEYS};
use outq_spool::exit::Code;
use outq_spool::layout::{GroupRole, Kind, PARTS};

/// The pages outq ships, by file name.
const PAGES: [&str; 5] = ["outq-enqueue.8", "outq-sendmail.8", "outq.8", "outq-spool.5", "outq.conf.5"];

fn man_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("man")
}

fn page(name: &str) -> String {
    let path = man_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The source lines of section `.Sh title`, up to the next `.Sh`.
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    let heading = format!(".Sh {title}");
    let mut lines = text.lines().skip_while(|l| l.trim_end() != heading);
    assert!(lines.next().is_some(), "no section {heading:?}");
    lines.take_while(|l| !l.starts_with(".Sh ")).collect()
}

/// Section titles of a page, in order.
fn sections(text: &str) -> Vec<&str> {
    text.lines().filter_map(|l| l.strip_prefix(".Sh ")).map(str::trim_end).collect()
}

/// The keys a section documents: the first word of each `.It Cm` item of
/// its outermost lists. Items of a list nested in a key's description (the
/// values of `starttls`, say) are not keys.
fn documented_keys<'a>(text: &'a str, title: &str) -> BTreeSet<&'a str> {
    let mut depth = 0usize;
    let mut keys = BTreeSet::new();
    for line in section(text, title) {
        if line.starts_with(".Bl ") {
            depth += 1;
        } else if line.trim_end() == ".El" {
            depth = depth.saturating_sub(1);
        } else if depth == 1 {
            if let Some(key) = line.strip_prefix(".It Cm ").and_then(|rest| rest.split_whitespace().next()) {
                keys.insert(key);
            }
        }
    }
    keys
}

#[test]
fn every_config_key_is_documented_and_only_those() {
    let text = page("outq.conf.5");
    let documented = documented_keys(&text, "KEYS");
    let known: BTreeSet<&str> = KEYS.iter().map(|(k, _)| *k).collect();
    let undocumented: Vec<_> = known.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&known).collect();
    assert!(undocumented.is_empty(), "keys in config::KEYS missing from outq.conf(5) KEYS: {undocumented:?}");
    assert!(unknown.is_empty(), "outq.conf(5) documents keys that config::KEYS does not have: {unknown:?}");
}

#[test]
fn every_runner_key_is_documented_and_only_those() {
    let text = page("outq.conf.5");
    let documented = documented_keys(&text, "RUNNER KEYS");
    let known: BTreeSet<&str> = RUNNER_KEYS.iter().map(|(k, _)| *k).collect();
    let undocumented: Vec<_> = known.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&known).collect();
    assert!(
        undocumented.is_empty(),
        "keys in config::RUNNER_KEYS missing from outq.conf(5) RUNNER KEYS: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "outq.conf(5) RUNNER KEYS documents keys that config::RUNNER_KEYS does not have: {unknown:?}"
    );
}

#[test]
fn every_address_key_is_documented_and_only_those() {
    let text = page("outq.conf.5");
    let documented = documented_keys(&text, "ADDRESS KEYS");
    let known: BTreeSet<&str> = ADDRESS_KEYS.iter().map(|(k, _)| *k).collect();
    assert_eq!(documented, known, "outq.conf(5) ADDRESS KEYS differs from config::ADDRESS_KEYS");
}

#[test]
fn exit_status_section_lists_exactly_the_helpers_codes() {
    let text = page("outq-enqueue.8");
    let mut documented = Vec::new();
    for line in section(&text, "EXIT STATUS") {
        let Some(rest) = line.strip_prefix(".It ") else { continue };
        let first = rest.split_whitespace().next().unwrap_or("");
        let code: i32 = first.parse().unwrap_or_else(|_| panic!("EXIT STATUS item is not a number: {line:?}"));
        documented.push(code);
    }
    let mut expected: Vec<i32> = Code::ALL.iter().map(|c| c.as_i32()).collect();
    expected.sort_unstable();
    let listed = documented.clone();
    documented.sort_unstable();
    assert_eq!(documented, listed, "outq-enqueue(8) EXIT STATUS should list the codes in ascending order");
    assert_eq!(documented, expected, "outq-enqueue(8) EXIT STATUS differs from exit::Code::ALL");
}

#[test]
fn every_spool_path_is_documented_with_its_owner_and_mode() {
    let text = page("outq-spool.5");
    // Rows of the layout table: `.It Pa NAME Ta OWNER:GROUP Ta MODE Ta purpose`.
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with(".It Pa ") && l.contains(" Ta "))
        .map(|l| l.trim_start_matches(".It Pa ").split(" Ta ").map(str::trim).collect())
        .collect();
    for part in PARTS.iter() {
        let label = match (part.name, part.kind) {
            ("", _) => format!("{DEFAULT_SPOOL}/"),
            (name, Kind::Dir) => format!("{name}/"),
            (name, Kind::File) => name.to_owned(),
        };
        let row = rows
            .iter()
            .find(|r| r.first() == Some(&label.as_str()))
            .unwrap_or_else(|| panic!("outq-spool(5) has no layout row for {label:?}"));
        let owner = match part.group {
            GroupRole::Owner => "outq:outq",
            GroupRole::Drop => "outq:outqdrop",
        };
        let mode = format!("{:04o}", part.mode);
        assert_eq!(row.get(1), Some(&owner), "outq-spool(5): owner of {label}");
        assert_eq!(row.get(2), Some(&mode.as_str()), "outq-spool(5): mode of {label}");
    }
    assert_eq!(rows.len(), PARTS.len(), "outq-spool(5) layout rows do not match layout::PARTS: {rows:?}");
}

#[test]
fn every_page_has_the_expected_sections() {
    for name in PAGES {
        let text = page(name);
        let have = sections(&text);
        let mut want = vec!["NAME", "SYNOPSIS", "DESCRIPTION", "FILES", "SEE ALSO"];
        if name.ends_with(".8") {
            want.push("EXIT STATUS");
        }
        for s in want {
            assert!(have.contains(&s), "{name} has no {s} section (it has {have:?})");
        }
    }
}

#[test]
fn mandoc_lint_finds_nothing() {
    let mut pages: Vec<PathBuf> =
        std::fs::read_dir(man_dir()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    pages.sort();
    for name in PAGES {
        assert!(pages.iter().any(|p| p.ends_with(name)), "man/{name} is missing");
    }
    let out = match Command::new("mandoc").args(["-Tlint", "-Wwarning"]).args(&pages).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var("OUTQ_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
                panic!("mandoc is not installed and OUTQ_REQUIRE_PRIVILEGED=1: install it (apt-get install mandoc)");
            }
            let _ = writeln!(std::io::stderr(), "SKIPPED (mandoc not installed)");
            return;
        }
        Err(e) => panic!("cannot run mandoc: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.is_empty() && stderr.is_empty(),
        "mandoc -Tlint -Wwarning: {}\n{stdout}{stderr}",
        out.status
    );
}
