//! One-line diagnostics. As PID 1 the agent's stderr is `/dev/console` (the guest serial
//! console the host keeps as a log file); elsewhere it is the terminal.

use std::io::Write;

/// Writes `bandsox-agent: <message>` as one line to stderr. Never fails, never panics.
pub fn write(args: std::fmt::Arguments<'_>) {
    let line = format!("bandsox-agent: {args}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `log!("format", args...)`: one line to the console.
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::write(format_args!($($arg)*))
    };
}
pub(crate) use log;
