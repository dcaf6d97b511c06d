/*!
SMTP command lines of `outq-sendmail -bs`, parsed without side effects.

A line arrives without its line end. Verbs are case-insensitive. `MAIL
FROM:` and `RCPT TO:` take a path in angle brackets or, as Postfix accepts
from local clients, without them; a space after the colon is tolerated. A
source route (`<@a,@b:user@example.org>`) is dropped, as RFC 5321 asks.
Parameters are `KEYWORD[=VALUE]` words; which ones are accepted is the
session's decision ([`super::smtpd`]). A line with a NUL or another control
character other than tab is a syntax error, never an address.
*/
#![forbid(unsafe_code)]

/// One `KEYWORD[=VALUE]` parameter of MAIL or RCPT, keyword upper-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub keyword: String,
    pub value: Option<String>,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail {
        path: Vec<u8>,
        params: Vec<Param>,
    },
    Rcpt {
        path: Vec<u8>,
        params: Vec<Param>,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    /// A verb this server knows of but does not offer (STARTTLS, AUTH,
    /// BDAT, ETRN, TURN): 502.
    NotOffered(String),
    /// Not a command at all: 500.
    Unknown,
    /// A known verb with bad arguments: 501 and why.
    Syntax(&'static str),
}

/// Parse one command line (without CR LF).
pub fn parse(line: &[u8]) -> Command {
    if line.iter().any(|&b| b != b'\t' && (b < 32 || b == 127)) {
        return Command::Syntax("control characters are not allowed in commands");
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return Command::Syntax("commands must be ASCII or UTF-8");
    };
    let text = text.trim_end_matches([' ', '\t']);
    let (verb, rest) = match text.find([' ', '\t']) {
        Some(i) => (text.get(..i).unwrap_or_default(), text.get(i + 1..).unwrap_or_default().trim_start()),
        None => (text, ""),
    };
    let verb = verb.to_ascii_uppercase();
    match verb.as_str() {
        "HELO" | "EHLO" => greeting(&verb, rest),
        "MAIL" => {
            path_command(rest, "FROM:").map_or_else(Command::Syntax, |(path, params)| Command::Mail { path, params })
        }
        "RCPT" => {
            path_command(rest, "TO:").map_or_else(Command::Syntax, |(path, params)| Command::Rcpt { path, params })
        }
        "DATA" => no_argument(rest, Command::Data),
        "RSET" => no_argument(rest, Command::Rset),
        "QUIT" => no_argument(rest, Command::Quit),
        "NOOP" => Command::Noop,
        "VRFY" => Command::Vrfy,
        "EXPN" => Command::Expn,
        "HELP" => Command::Help,
        "STARTTLS" | "AUTH" | "BDAT" | "ETRN" | "TURN" | "ATRN" | "SEND" | "SOML" | "SAML" => Command::NotOffered(verb),
        _ => Command::Unknown,
    }
}

fn greeting(verb: &str, rest: &str) -> Command {
    if rest.is_empty() {
        return Command::Syntax("give your host name after HELO or EHLO");
    }
    let name = rest.to_owned();
    if verb == "EHLO" { Command::Ehlo(name) } else { Command::Helo(name) }
}

fn no_argument(rest: &str, c: Command) -> Command {
    if rest.is_empty() { c } else { Command::Syntax("this command takes no argument") }
}

/// `FROM:<path> params` or `TO:<path> params`.
fn path_command(rest: &str, keyword: &str) -> Result<(Vec<u8>, Vec<Param>), &'static str> {
    let head = rest.get(..keyword.len()).unwrap_or_default();
    if !head.eq_ignore_ascii_case(keyword) {
        return Err(if keyword == "FROM:" { "use MAIL FROM:<address>" } else { "use RCPT TO:<address>" });
    }
    let rest = rest.get(keyword.len()..).unwrap_or_default().trim_start();
    let (path, params) = if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>').ok_or("the address has no closing >")?;
        (inner.get(..end).unwrap_or_default(), inner.get(end + 1..).unwrap_or_default())
    } else {
        match rest.find([' ', '\t']) {
            Some(i) => (rest.get(..i).unwrap_or_default(), rest.get(i..).unwrap_or_default()),
            None => (rest, ""),
        }
    };
    if !params.is_empty() && !params.starts_with([' ', '\t']) {
        return Err("put a space between the address and its parameters");
    }
    let path = strip_route(path);
    if path.contains(['<', '>', ' ', '\t']) {
        return Err("the address is malformed");
    }
    let params = params.split([' ', '\t']).filter(|w| !w.is_empty()).map(param).collect::<Result<Vec<_>, _>>()?;
    Ok((path.as_bytes().to_vec(), params))
}

/// `@a,@b:user@d` is `user@d`.
fn strip_route(path: &str) -> &str {
    if path.starts_with('@') {
        if let Some(i) = path.find(':') {
            return path.get(i + 1..).unwrap_or_default();
        }
    }
    path
}

fn param(word: &str) -> Result<Param, &'static str> {
    let (k, v) = match word.split_once('=') {
        Some((k, v)) => (k, Some(v.to_owned())),
        None => (word, None),
    };
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err("malformed parameter");
    }
    Ok(Param { keyword: k.to_ascii_uppercase(), value: v })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Command {
        parse(s.as_bytes())
    }

    #[test]
    fn verbs_and_paths() {
        assert_eq!(p("ehlo client.example"), Command::Ehlo("client.example".into()));
        assert_eq!(p("HELO x"), Command::Helo("x".into()));
        assert_eq!(p("EHLO"), Command::Syntax("give your host name after HELO or EHLO"));
        assert_eq!(
            p("MAIL FROM:<a@b.example> SIZE=12 body=8BITMIME"),
            Command::Mail {
                path: b"a@b.example".to_vec(),
                params: vec![
                    Param { keyword: "SIZE".into(), value: Some("12".into()) },
                    Param { keyword: "BODY".into(), value: Some("8BITMIME".into()) }
                ]
            }
        );
        assert_eq!(p("mail from: <>"), Command::Mail { path: vec![], params: vec![] });
        assert_eq!(p("MAIL FROM:a@b.example"), Command::Mail { path: b"a@b.example".to_vec(), params: vec![] });
        assert_eq!(p("RCPT TO:<@r1,@r2:u@d.example>"), Command::Rcpt { path: b"u@d.example".to_vec(), params: vec![] });
        assert_eq!(p("DATA"), Command::Data);
        assert_eq!(p("data now"), Command::Syntax("this command takes no argument"));
        assert_eq!(p("QUIT"), Command::Quit);
        assert_eq!(p("STARTTLS"), Command::NotOffered("STARTTLS".into()));
        assert_eq!(p("FOO"), Command::Unknown);
        assert_eq!(p(""), Command::Unknown);
    }

    #[test]
    fn hostile_lines_are_syntax_errors() {
        assert!(matches!(p("MAIL FROM:<a@b\0c>"), Command::Syntax(_)));
        assert!(matches!(p("RCPT TO:<a@b"), Command::Syntax(_)));
        assert!(matches!(p("RCPT TO:<a@b>X=1"), Command::Syntax(_)));
        assert!(matches!(p("RCPT TO:<a<b>"), Command::Syntax(_)));
        assert!(matches!(p("RCPT FROM:<a@b>"), Command::Syntax(_)));
        assert!(matches!(p("MAIL FROM:<a@b> =x"), Command::Syntax(_)));
        assert!(matches!(parse(b"MAIL FROM:<\xff>"), Command::Syntax(_)));
        assert!(matches!(p("RCPT TO:<a@b>\x1b[2J"), Command::Syntax(_)));
    }
}
