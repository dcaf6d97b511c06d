/*!
The local account files, `/etc/passwd` and `/etc/group`, read directly.

The set-group-ID helper must not use NSS: a name service module is a
library loaded into a privileged process from a configuration the caller's
system may change, and the helper is built statically, where glibc cannot
load those modules safely at all. When it needs an account name (a default
sender without `-f`) or a group's members (a `submit_users` list), it reads
these two files the way the `files` service does: the first line that
matches wins. Accounts that exist only in a directory service (LDAP, sssd,
systemd's dynamic users) are therefore unknown to the helper: such a
caller gives its sender with `-f` (outq-sendmail always does), and
`submit_users` names it by number. `outq check` says when a listed name
resolves through NSS but not through these files.

Both files are read under the rules of every root-administered file the
helper reads: no symbolic link, owned by root and not writable by group or
others, the directories above likewise, and a size limit.
*/
#![forbid(unsafe_code)]

use std::path::Path;

use crate::config::{self, Trust};
use crate::fs::FsError;

/// The password file.
pub const PASSWD: &str = "/etc/passwd";
/// The group file.
pub const GROUP: &str = "/etc/group";

/// Largest account file read (a site with a hundred thousand local
/// accounts stays well under it).
pub const MAX_ACCOUNT_FILE: u64 = 64 * 1024 * 1024;

/// One line of the password file: what outq needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// One line of the group file: what outq needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The fields of a line `a:b:c:...`, or `None` for a comment, an empty
/// line, or a line that is not valid UTF-8 (skipped, as the C library
/// skips what it cannot parse).
fn fields(line: &[u8]) -> Option<Vec<&str>> {
    let line = std::str::from_utf8(line).ok()?;
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    Some(line.split(':').collect())
}

fn number(field: &str) -> Option<u32> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    field.parse().ok()
}

fn passwd_line(line: &[u8]) -> Option<Passwd> {
    let f = fields(line)?;
    let (name, uid, gid) = (f.first()?, f.get(2)?, f.get(3)?);
    // `+name` and `-name` are NIS compatibility lines, never accounts.
    if name.is_empty() || name.starts_with(['+', '-']) {
        return None;
    }
    Some(Passwd { name: (*name).to_owned(), uid: number(uid)?, gid: number(gid)? })
}

fn group_line(line: &[u8]) -> Option<Group> {
    let f = fields(line)?;
    let (name, gid) = (f.first()?, f.get(2)?);
    if name.is_empty() || name.starts_with(['+', '-']) {
        return None;
    }
    let members = f.get(3).map(|m| m.split(',').filter(|m| !m.is_empty()).map(str::to_owned).collect());
    Some(Group { name: (*name).to_owned(), gid: number(gid)?, members: members.unwrap_or_default() })
}

/// The accounts of `text` (a password file), in order, skipping what is
/// not an account.
pub fn passwd_entries(text: &[u8]) -> impl Iterator<Item = Passwd> + '_ {
    text.split(|b| *b == b'\n').filter_map(passwd_line)
}

/// The first account of `text` (a password file) with user ID `uid`.
pub fn passwd_by_uid(text: &[u8], uid: u32) -> Option<Passwd> {
    passwd_entries(text).find(|p| p.uid == uid)
}

/// The first account of `text` (a password file) named `name`.
pub fn passwd_by_name(text: &[u8], name: &str) -> Option<Passwd> {
    passwd_entries(text).find(|p| p.name == name)
}

/// The first group of `text` (a group file) named `name`.
pub fn group_by_name(text: &[u8], name: &str) -> Option<Group> {
    text.split(|b| *b == b'\n').filter_map(group_line).find(|g| g.name == name)
}

/// Read one of the account files under the root-administered file rules;
/// a missing file reads as empty (no account is found in it).
pub fn read(path: &str) -> Result<Vec<u8>, FsError> {
    Ok(config::read_trusted(Path::new(path), &Trust::root(), MAX_ACCOUNT_FILE)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_TEXT: &[u8] = b"root:x:0:0:root:/root:/bin/bash\n\
# a comment\n\
\n\
+nis::0:0:::\n\
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n\
bad:x:notanumber:1::/:/bin/sh\n\
short:x:7\n\
\xff\xfe:x:34:34::/:/bin/sh\n\
www-data:x:99:99:second:/:/bin/sh\n\
alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash";

    const GROUP_TEXT: &[u8] = b"root:x:0:\n\
mailers:x:120:alice,bob\n\
-nis:x:0:\n\
empty:x:121:\n\
mailers:x:999:mallory\n";

    #[test]
    fn finds_the_first_account_by_uid_and_by_name() {
        let p = passwd_by_uid(PASSWD_TEXT, 33).unwrap();
        assert_eq!(p, Passwd { name: "www-data".into(), uid: 33, gid: 33 });
        assert_eq!(passwd_by_name(PASSWD_TEXT, "www-data").unwrap().uid, 33, "the first line wins");
        assert_eq!(passwd_by_uid(PASSWD_TEXT, 1000).unwrap().name, "alice", "a last line without newline");
        assert_eq!(passwd_by_uid(PASSWD_TEXT, 0).unwrap().name, "root", "not the NIS line");
    }

    #[test]
    fn skips_what_it_cannot_parse() {
        assert_eq!(passwd_by_name(PASSWD_TEXT, "bad"), None);
        assert_eq!(passwd_by_name(PASSWD_TEXT, "short"), None);
        assert_eq!(passwd_by_uid(PASSWD_TEXT, 34), None, "not UTF-8");
        assert_eq!(passwd_by_name(PASSWD_TEXT, "+nis"), None);
        assert_eq!(passwd_by_uid(PASSWD_TEXT, 4242), None);
        assert_eq!(passwd_by_uid(b"", 0), None);
    }

    #[test]
    fn finds_the_first_group_by_name_with_its_members() {
        let g = group_by_name(GROUP_TEXT, "mailers").unwrap();
        assert_eq!(g, Group { name: "mailers".into(), gid: 120, members: vec!["alice".into(), "bob".into()] });
        assert_eq!(group_by_name(GROUP_TEXT, "empty").unwrap().members, Vec::<String>::new());
        assert_eq!(group_by_name(GROUP_TEXT, "-nis"), None);
        assert_eq!(group_by_name(GROUP_TEXT, "nobody"), None);
    }
}
