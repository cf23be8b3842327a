//! Crash safety: the daemon is SIGKILLed at random moments while users are added; every
//! restart must open the state, and every user whose add was acknowledged must be there.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::collections::BTreeSet;
use std::time::Duration;

use periphery_e2e::{Daemon, DaemonOptions};

const USERS: usize = 1000;
const KILLS: usize = 20;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn acknowledged_users_survive_twenty_sigkills() {
    let seed = std::env::var("PERIPHERY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    println!("seed {seed} (set PERIPHERY_TEST_SEED to replay)");
    let mut rng = XorShift(seed);

    // Kill points: 20 distinct adds, chosen at random, each killed a random 0-20 ms into
    // its request (before, during or after the commit).
    let mut kill_at = BTreeSet::new();
    while kill_at.len() < KILLS {
        kill_at.insert((rng.next() % USERS as u64) as usize);
    }

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut daemon = Some(Daemon::start(&state, DaemonOptions::default()));
    let mut acked = BTreeSet::new();
    let mut lost_acks = 0;
    for i in 0..USERS {
        let name = format!("u{i:04}");
        let mut killed_this_one = false;
        loop {
            let d = daemon.as_ref().expect("daemon running");
            let child = d.spawn_cli(&["user", "add", &name, "--no-password"]);
            if kill_at.contains(&i) && !killed_this_one {
                killed_this_one = true;
                std::thread::sleep(Duration::from_micros(rng.next() % 20_000));
                daemon.take().expect("daemon").kill();
                let out = child.wait_with_output().unwrap();
                if out.status.success() {
                    acked.insert(name.clone());
                    daemon = Some(Daemon::start(&state, DaemonOptions::default()));
                    break;
                }
                // Not acknowledged: retry on the restarted daemon.
                daemon = Some(Daemon::start(&state, DaemonOptions::default()));
                continue;
            }
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                acked.insert(name.clone());
            } else if err.contains("already exists") {
                // Committed before the kill, acknowledgement lost: allowed.
                lost_acks += 1;
            } else {
                panic!("user add {name} failed: {err}\n{}", d.log());
            }
            break;
        }
    }
    let d = daemon.expect("daemon");
    let listed: BTreeSet<String> = d
        .ok(&["user", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|n| n != "admin")
        .collect();
    let missing: Vec<_> = acked.difference(&listed).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert_eq!(listed.len(), USERS, "every user is there exactly once");
    println!(
        "{KILLS} kills, {} acknowledged, {lost_acks} committed with the acknowledgement lost",
        acked.len()
    );
}
