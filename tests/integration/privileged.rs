//! Privileged tests (filled below).
