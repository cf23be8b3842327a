//! Streaming benchmark (`make bench-stream`): a 1080p monitor with moving content (ico bouncing
//! on the root window) streamed to 1 and then 3 tablets on loopback, next to the bare pipeline
//! of conversion + encode on the same size of frames, in the same run. Figures, not pass/fail.

#![allow(missing_docs, clippy::unwrap_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use periphery_e2e::{Daemon, DaemonOptions, Tablet};
use periphery_media::convert::default_threads;
use periphery_media::{bgra_to_i420, H264Encoder, I420};
use periphery_protocol::AttachMode;
use periphery_tablet::home::Home;
use periphery_tablet::viewer::{Stats, Viewer};

const SPAN: Duration = Duration::from_secs(5);

fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Duration::from_millis((f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) * 10)
}

/// Reads every viewer for `SPAN`, concurrently, and returns their figures.
async fn run(viewers: &mut [Viewer]) -> Vec<Stats> {
    for v in viewers.iter_mut() {
        let _ = v.take_stats();
    }
    let end = tokio::time::Instant::now() + SPAN;
    let mut reads: Vec<_> = viewers
        .iter_mut()
        .map(|v| {
            Box::pin(async move {
                while tokio::time::Instant::now() < end {
                    let _ = v.next_frame(Duration::from_millis(100)).await.unwrap();
                }
                v.take_stats()
            })
        })
        .collect();
    let mut results: Vec<Option<Stats>> = vec![None; reads.len()];
    std::future::poll_fn(|cx| {
        for (i, f) in reads.iter_mut().enumerate() {
            if results[i].is_none() {
                if let std::task::Poll::Ready(s) = f.as_mut().poll(cx) {
                    results[i] = Some(s);
                }
            }
        }
        if results.iter().all(Option::is_some) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results.into_iter().map(|r| r.unwrap()).collect()
}

fn bare_encoder_fps(w: usize, h: usize) -> f64 {
    let frames: Vec<Vec<u8>> = (0..4)
        .map(|t| {
            (0..w * h * 4)
                .map(|i| ((i / 4 % w + i / 4 / w + t * 9) % 253) as u8)
                .collect()
        })
        .collect();
    let mut enc = H264Encoder::probe(w as u32, h as u32, 60).unwrap();
    let mut img = I420::new(w as u32, h as u32);
    let n = 120;
    let t = Instant::now();
    for i in 0..n {
        bgra_to_i420(&frames[i % 4], w * 4, &mut img, default_threads());
        enc.encode(&img, i as i64 * 16_666, false).unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("state"),
        DaemonOptions {
            config: Some(
                "[workstations]\nwindow_manager = []\nsession = [\"ico\", \"-r\", \"-faces\"]\n"
                    .into(),
            ),
            ..Default::default()
        },
    );
    d.ok(&["user", "add", "alice", "--no-password"]);
    d.create_ws("alice", "bench", "1920x1080");
    d.ok(&["ws", "start", "bench"]);
    let daemon_pid: u32 = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("serve") && c.contains(&d.state.display().to_string())
                })
                .unwrap_or(false)
        })
        .expect("the daemon's pid");

    let mut tablets = Vec::new();
    for i in 0..3 {
        let t = Tablet::new(&dir.path().join(format!("t{i}")));
        t.pair(&d, &d.pair_code("alice"));
        tablets.push(t);
    }
    let attach = |t: &Tablet| {
        let c = Home::new(t.home.clone()).load().unwrap();
        let cfg = periphery_tablet::tls::pinned(&c.ca_der, &c.cert_der, &c.key_der).unwrap();
        let addr = d.banner.addr;
        async move {
            Viewer::attach(addr, cfg, "bench", AttachMode::Mirror { monitor: 0 }, true)
                .await
                .unwrap()
        }
    };

    let t0 = Instant::now();
    let mut one = vec![attach(&tablets[0]).await];
    one[0]
        .next_frame(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("a first frame");
    let first_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let c0 = cpu_of(daemon_pid);
    let s1 = run(&mut one).await;
    let cpu1 = (cpu_of(daemon_pid) - c0).as_secs_f64() / SPAN.as_secs_f64() * 100.0;

    one.push(attach(&tablets[1]).await);
    one.push(attach(&tablets[2]).await);
    let c0 = cpu_of(daemon_pid);
    let s3 = run(&mut one).await;
    let cpu3 = (cpu_of(daemon_pid) - c0).as_secs_f64() / SPAN.as_secs_f64() * 100.0;

    let bare = bare_encoder_fps(1920, 1080);
    println!(
        "stream 1080p (ico on the root window), loopback, {} cores",
        default_threads()
    );
    println!("  attach -> first frame: {first_ms:.0} ms");
    println!(
        "  1 tablet:  {:.1} fps, latency p50 {:.1} ms p99 {:.1} ms, daemon CPU {cpu1:.0}% of a core",
        s1[0].fps, s1[0].p50_ms, s1[0].p99_ms
    );
    for (i, s) in s3.iter().enumerate() {
        println!(
            "  3 tablets, #{i}: {:.1} fps, latency p50 {:.1} ms p99 {:.1} ms",
            s.fps, s.p50_ms, s.p99_ms
        );
    }
    println!(
        "  3 tablets: daemon CPU {cpu3:.0}% of a core; per extra tablet {:+.1}%",
        (cpu3 - cpu1) / 2.0
    );
    println!(
        "  bare convert+encode on 1080p frames: {bare:.1} fps; pipeline (1 tablet) / bare = {:.2} (the pipeline encodes only frames that changed: bounded by the content's rate)",
        s1[0].fps / bare
    );
    for v in one {
        v.abandon();
    }
}
