/*!
Which program answers to `/usr/sbin/sendmail`, and which package put it
there, for `outq check`.

Cron, PHP's `mail()` and every MTA-agnostic program submit through that
path, so an administrator who installed outq beside another MTA must see
at once that mail still bypasses outq. Asked of dpkg, then rpm; a path
neither knows is reported as such.
*/
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const SENDMAIL: &str = "/usr/sbin/sendmail";

/// The package owning `path`, by `dpkg-query -S` or `rpm -qf`.
fn package_of(path: &Path) -> Option<String> {
    let ask = |program: &str, args: &[&str]| -> Option<String> {
        let out = Command::new(program)
            .args(args)
            .arg(path)
            .env_clear()
            .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().next()?.trim();
        // dpkg: "postfix: /usr/sbin/sendmail"; rpm: "postfix-3.8.1-1.fc39.x86_64".
        let name = line.split_once(": ").map_or(line, |(pkg, _)| pkg);
        (!name.is_empty()).then(|| name.to_owned())
    };
    ask("dpkg-query", &["-S"]).or_else(|| ask("rpm", &["-qf"]))
}

/// One line describing `/usr/sbin/sendmail`.
pub fn note() -> Option<String> {
    Some(describe(Path::new(SENDMAIL)))
}

fn describe(link: &Path) -> String {
    let shown = link.display();
    let target: PathBuf = match std::fs::canonicalize(link) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return format!(
                "{shown} does not exist: programs that mail through sendmail (cron, PHP) cannot submit \
                 (fix: ln -s /usr/sbin/outq-sendmail {shown})"
            );
        }
        Err(e) => return format!("{shown} cannot be examined: {e}"),
    };
    let package = package_of(&target)
        .or_else(|| package_of(link))
        .map(|p| format!("package {p}"))
        .unwrap_or_else(|| "no package".to_owned());
    let is_outq = target.file_name().is_some_and(|n| n == "outq-sendmail");
    let resolved = if target.as_path() == link { String::new() } else { format!(" -> {}", target.display()) };
    if is_outq {
        format!("{shown}{resolved} is outq-sendmail ({package})")
    } else {
        format!(
            "{shown}{resolved} belongs to {package}, not to outq: mail submitted with sendmail \
             does not go through outq"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_path_says_how_to_fix_it() {
        let text = describe(Path::new("/nonexistent/outq-test/sendmail"));
        assert!(text.contains("does not exist") && text.contains("fix: ln -s"), "{text}");
    }

    #[test]
    fn names_outq_sendmail_behind_a_link() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let real = dir.path().join("outq-sendmail");
        std::fs::write(&real, b"").unwrap_or_else(|e| panic!("write: {e}"));
        let link = dir.path().join("sendmail");
        std::os::unix::fs::symlink(&real, &link).unwrap_or_else(|e| panic!("symlink: {e}"));
        let text = describe(&link);
        assert!(text.contains("is outq-sendmail") && text.contains("no package"), "{text}");
        let other = dir.path().join("sendmail.postfix");
        std::fs::write(&other, b"").unwrap_or_else(|e| panic!("write: {e}"));
        let text = describe(&other);
        assert!(text.contains("not to outq"), "{text}");
    }
}
