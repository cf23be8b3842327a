//! The wall clock, as the appliance stores and compares it: Unix seconds (audit entries,
//! devices) and Unix milliseconds (sessions, the render farm). A clock before 1970 reads 0.

use std::time::{SystemTime, UNIX_EPOCH};

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Unix seconds now.
pub fn unix_secs() -> u64 {
    since_epoch().as_secs()
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    since_epoch().as_millis() as u64
}
