//! Trace formats: JSON Lines (read and write), strace-like text, Chrome trace-event JSON.
