//! The `outq-sendmail` command; everything lives in the library's `sendmail` module.
fn main() -> std::process::ExitCode {
    outq::sendmail::main()
}
