//! Streaming benchmark (`make bench-stream`): a 1080p monitor whose whole area changes 120
//! times a second (`periphery-test-animate` as the session: faster than the encoder, so the
//! content does not bound the rate), streamed to 1 and then 3 tablets on loopback, next to the
//! bare conversion + encode loop on the same captured frames (fetched by sequence number from
//! the appliance), in the same run. Figures, not pass/fail.

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

/// (busy, total) jiffies of the whole machine.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let total: u64 = f.iter().sum();
    let idle = f.get(3).unwrap_or(&0) + f.get(4).unwrap_or(&0);
    (total - idle, total)
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

/// Convert + encode `frames` (BGRA, tight) in a loop, as fast as it goes: frames per second.
fn bare_encoder_fps(frames: &[Vec<u8>], w: usize, h: usize) -> f64 {
    let mut enc = H264Encoder::probe(w as u32, h as u32, 60).unwrap();
    let mut img = I420::new(w as u32, h as u32);
    let n = 180;
    let t = Instant::now();
    for i in 0..n {
        bgra_to_i420(
            &frames[i % frames.len()],
            w * 4,
            &mut img,
            default_threads(),
        );
        enc.encode(&img, i as i64 * 16_666, false).unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// The pipeline line of `periphery status` (rate and stage times).
fn pipeline_line(d: &Daemon) -> String {
    let status = d.ok(&["status"]);
    status
        .lines()
        .find_map(|l| l.trim().strip_prefix("pipeline: "))
        .unwrap_or("no pipeline in status")
        .to_owned()
}

/// The captured frames the appliance sent with sequence numbers `seqs`, as BGRA.
fn source_frames(
    d: &Daemon,
    dir: &std::path::Path,
    seqs: impl Iterator<Item = u64>,
) -> Vec<Vec<u8>> {
    seqs.map(|seq| {
        let png = dir.join(format!("source-{seq}.png"));
        d.ok(&[
            "ws",
            "screenshot",
            "bench",
            "--sequence",
            &seq.to_string(),
            png.to_str().unwrap(),
        ]);
        let (_, _, rgb) =
            periphery_workstation::png::decode_rgb(&std::fs::read(&png).unwrap()).unwrap();
        rgb.chunks(3)
            .flat_map(|p| [p[2], p[1], p[0], 255])
            .collect()
    })
    .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("state"),
        DaemonOptions {
            config: Some(format!(
                "[streaming]\nkeep_source_frames = 48\n[workstations]\nwindow_manager = []\nsession = [{:?}, \"1920x1080\", \"120\"]\n",
                periphery_e2e::bin("periphery-test-animate").display().to_string()
            )),
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
    let m0 = machine_jiffies();
    let s1 = run(&mut one).await;
    let m1 = machine_jiffies();
    let machine_busy = (m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64 * 100.0;
    let status1 = pipeline_line(&d);
    let cpu1 = (cpu_of(daemon_pid) - c0).as_secs_f64() / SPAN.as_secs_f64() * 100.0;

    one.push(attach(&tablets[1]).await);
    one.push(attach(&tablets[2]).await);
    let c0 = cpu_of(daemon_pid);
    let s3 = run(&mut one).await;
    let status3 = pipeline_line(&d);
    let cpu3 = (cpu_of(daemon_pid) - c0).as_secs_f64() / SPAN.as_secs_f64() * 100.0;

    // The same frames the pipeline encoded, for the bare loop.
    // Newest first: the appliance keeps only its last 48 frames, and it keeps encoding.
    let newest = one[0].latest().unwrap().header.sequence;
    let frames = source_frames(
        &d,
        dir.path(),
        (newest.saturating_sub(3).max(1)..newest + 1).rev(),
    );
    // The bare loop gets the machine: the tablets leave, the pipeline stops (only the
    // animation keeps painting).
    for v in one {
        v.detach().await.unwrap();
    }
    periphery_e2e::wait_for("the pipeline to stop", Duration::from_secs(30), || {
        (!d.ok(&["status"]).contains("pipeline: ")).then_some(())
    });
    let bare = bare_encoder_fps(&frames, 1920, 1080);
    println!(
        "stream 1080p (the whole monitor changing at 120 fps), loopback, {} cores",
        default_threads()
    );
    println!("  attach -> first frame: {first_ms:.0} ms");
    println!(
        "  machine busy while streaming to 1 tablet: {machine_busy:.0}% of all cores (X server, the animation, the tablet's decoder and the appliance share them)"
    );
    println!("  appliance, 1 tablet: {status1}");
    println!("  appliance, 3 tablets: {status3}");
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
        "  bare convert+encode of {} of the same captured frames: {bare:.1} fps; pipeline (1 tablet) / bare = {:.2}, (3 tablets) / bare = {:.2}",
        frames.len(),
        s1[0].fps / bare,
        s3.iter().map(|s| s.fps).sum::<f64>() / 3.0 / bare
    );
}
