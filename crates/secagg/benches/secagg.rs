//! Secure aggregation benchmark: one whole round, every site and the coordinator simulated in
//! this process on 2 threads.
//!
//! Run: `cargo bench -p fedcare-secagg` (release). Defaults: n = 100 sites, d = 1,000,000,
//! b = 32, 10% of the sites drop out after the share exchange (the costliest stage for the
//! coordinator: it must recompute their pairwise masks with every surviving neighbour).
//! `SECAGG_BENCH_SITES`, `SECAGG_BENCH_DIM` and `SECAGG_BENCH_REPS` override n, d and the
//! repetitions of the timed round; `SECAGG_BENCH_THREADS` (default 2) sets the threads for
//! the sites and for the coordinator's unmasking (`Server::finish_threads`).
//!
//! Reported: per-site client time (all four steps, one thread), the time the PRG alone needs
//! for that site's masks, coordinator time (all its steps, including decoding messages), bytes
//! sent per site (the wire encodings of everything it sends), the coordinator's peak memory,
//! and the total compute (every site plus the coordinator, the unmasking counted once per
//! thread it runs on), and the process's CPU time over the round from /proc/self/stat. The coordinator's memory is
//! measured by replaying the recorded messages into a fresh coordinator under a counting
//! allocator: peak live bytes minus what was live before the replay.
//!
//! The only `unsafe` in this crate's targets is the counting allocator below, which delegates
//! to the system allocator and adds two atomic counters; the library itself forbids unsafe.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use fedcare_secagg::prg::{CHUNK, MaskPrg, lane_bytes};
use fedcare_secagg::{
    AdvertiseKeys, Client, EncryptedShare, Graph, IdentityKey, MaskedInput, Params, RoundSetup,
    Server, SystemRng, UnmaskRequest, UnmaskResponse, graph_seed,
};

struct Counting;
static CUR: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let c = CUR.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(c, Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        CUR.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            CUR.fetch_sub(l.size(), Relaxed);
            grew(new);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

static THREADS_ENV: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
fn threads() -> usize {
    *THREADS_ENV.get_or_init(|| env("SECAGG_BENCH_THREADS", 2))
}

/// Runs `f` over `items` on THREADS threads; results in item order.
fn par_each<T: Send, R: Send>(items: &mut [T], f: impl Fn(usize, &mut T) -> R + Sync) -> Vec<R> {
    let chunk = items.len().div_ceil(threads()).max(1);
    std::thread::scope(|s| {
        let f = &f;
        let hs: Vec<_> = items
            .chunks_mut(chunk)
            .enumerate()
            .map(|(ci, ch)| {
                s.spawn(move || {
                    ch.iter_mut()
                        .enumerate()
                        .map(|(j, t)| f(ci * chunk + j, t))
                        .collect::<Vec<R>>()
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("worker panicked"))
            .collect()
    })
}

/// Site i's input: cheap deterministic values in Z_{2^32}.
fn input(i: usize, d: usize) -> Vec<u64> {
    (0..d as u64)
        .map(|c| {
            (c.wrapping_mul(0x9e3779b97f4a7c15) ^ (i as u64).wrapping_mul(0xbf58476d1ce4e5b9)) >> 32
        })
        .collect()
}

struct Site {
    index: u32,
    client: Option<Client>,
    time: Duration,
    sent: usize,
    share_bytes: usize,
    masks: usize,
}

/// Recorded wire messages, to replay into a fresh coordinator.
#[derive(Default)]
struct Recording {
    keys: Vec<Vec<u8>>,
    shares: Vec<(u32, Vec<Vec<u8>>)>,
    masked: Vec<Vec<u8>>,
    unmask: Vec<Vec<u8>>,
}

struct RoundStats {
    client_mean: Duration,
    client_max: Duration,
    prg_alone_mean: Duration,
    coordinator: Duration,
    wall: Duration,
    total_compute: Duration,
    bytes_mean: f64,
    share_bytes_mean: f64,
    masks_mean: f64,
    survivors: usize,
    fold: Duration,
    finish: Duration,
    process_cpu: Option<Duration>,
}

/// CPU time (user + system) of this whole process so far, from /proc/self/stat (Linux; 10 ms
/// ticks). Includes the harness's own work (building inputs, encoding, checking the sum).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn run_round(
    setup: &RoundSetup,
    ids: &[IdentityKey],
    dropped: &[u32],
    rec: &mut Recording,
) -> RoundStats {
    let n = setup.n();
    let d = setup.params.dim;
    let bits = setup.params.bits;
    let cpu0 = process_cpu();
    let wall = Instant::now();
    let mut coord = Duration::ZERO;
    let mut sites: Vec<Site> = (0..n as u32)
        .map(|i| Site {
            index: i,
            client: None,
            time: Duration::ZERO,
            sent: 0,
            share_bytes: 0,
            masks: 0,
        })
        .collect();

    // Step 1: keys.
    let keys: Vec<Vec<u8>> = par_each(&mut sites, |_, s| {
        let t = Instant::now();
        let mut rng = SystemRng::new();
        let (c, k) = Client::new(setup, s.index, &ids[s.index as usize], &mut rng).expect("client");
        let b = k.to_bytes();
        s.time += t.elapsed();
        s.sent += b.len();
        s.client = Some(c);
        b
    });
    let t = Instant::now();
    let mut server = Server::new(setup).expect("server");
    for b in &keys {
        server
            .add_keys(AdvertiseKeys::from_bytes(b).expect("decode"))
            .expect("keys");
    }
    let all_keys = server.keys_done().expect("keys_done");
    coord += t.elapsed();
    rec.keys = keys;

    // Step 2: shares.
    let shares: Vec<Vec<Vec<u8>>> = par_each(&mut sites, |_, s| {
        let t = Instant::now();
        let c = s.client.as_mut().expect("client");
        let out: Vec<Vec<u8>> = c
            .share_keys(&all_keys)
            .expect("share_keys")
            .iter()
            .map(|e| e.to_bytes())
            .collect();
        s.time += t.elapsed();
        s.share_bytes = out.iter().map(|b| b.len()).sum();
        s.sent += s.share_bytes;
        out
    });
    let t = Instant::now();
    for (i, sh) in shares.iter().enumerate() {
        let decoded = sh
            .iter()
            .map(|b| EncryptedShare::from_bytes(b).expect("decode"))
            .collect();
        server.add_shares(i as u32, decoded).expect("add_shares");
    }
    let forwarded: BTreeMap<u32, Vec<Vec<u8>>> = server
        .shares_done()
        .expect("shares_done")
        .into_iter()
        .map(|(k, v)| (k, v.iter().map(|e| e.to_bytes()).collect()))
        .collect();
    coord += t.elapsed();
    rec.shares = shares
        .into_iter()
        .enumerate()
        .map(|(i, s)| (i as u32, s))
        .collect();

    // Step 3: masked inputs (the dropouts stop here).
    let masked: Vec<Option<Vec<u8>>> = par_each(&mut sites, |_, s| {
        if dropped.contains(&s.index) {
            s.client = None;
            return None;
        }
        let x = input(s.index as usize, d);
        let mine: Vec<EncryptedShare> = forwarded[&s.index]
            .iter()
            .map(|b| EncryptedShare::from_bytes(b).expect("decode"))
            .collect();
        s.masks = mine.len() + 1;
        let t = Instant::now();
        let c = s.client.as_mut().expect("client");
        let m = c.masked_input_bytes(&mine, &x).expect("masked_input");
        s.time += t.elapsed();
        s.sent += m.len();
        Some(m)
    });
    let t = Instant::now();
    for m in masked.iter().flatten() {
        server.add_masked_bytes(m).expect("add_masked");
    }
    let t_fold = t.elapsed();
    let requests: BTreeMap<u32, Vec<u8>> = server
        .masked_done()
        .expect("masked_done")
        .into_iter()
        .map(|(k, r)| (k, r.to_bytes()))
        .collect();
    coord += t.elapsed();
    rec.masked = masked.into_iter().flatten().collect();

    // Step 4: unmasking.
    let responses: Vec<Option<Vec<u8>>> = par_each(&mut sites, |_, s| {
        let c = s.client.as_mut()?;
        let req = UnmaskRequest::from_bytes(&requests[&s.index]).expect("decode");
        let t = Instant::now();
        let r = c.unmask(&req).expect("unmask").to_bytes();
        s.time += t.elapsed();
        s.sent += r.len();
        Some(r)
    });
    let t = Instant::now();
    for r in responses.iter().flatten() {
        server
            .add_unmask(UnmaskResponse::from_bytes(r).expect("decode"))
            .expect("add_unmask");
    }
    let t_finish = Instant::now();
    let sum = server.finish_threads(threads()).expect("finish");
    let t_finish = t_finish.elapsed();
    coord += t.elapsed();
    let wall = wall.elapsed();
    let cpu1 = process_cpu();
    rec.unmask = responses.into_iter().flatten().collect();

    // Check the result against the plain sum (not timed).
    let survivors = server.survivors();
    let mut plain = vec![0u32; d];
    for &i in &survivors {
        for (p, v) in plain.iter_mut().zip(input(i as usize, d)) {
            *p = p.wrapping_add(v as u32);
        }
    }
    assert!(
        bits == 32 && sum.iter().zip(&plain).all(|(a, b)| *a == *b as u64),
        "the unmasked sum must equal the plain sum"
    );

    // The PRG alone for a few survivors' masks (one thread).
    let sample: Vec<&Site> = sites
        .iter()
        .filter(|s| s.client.is_some())
        .take(5)
        .collect();
    let w = lane_bytes(bits);
    let mut buf = vec![0u8; CHUNK * w];
    let mut prg_total = Duration::ZERO;
    for s in &sample {
        let prgs: Vec<MaskPrg> = (0..s.masks)
            .map(|m| MaskPrg::new(&[m as u8 ^ s.index as u8; 32]))
            .collect();
        let t = Instant::now();
        for c in 0..d.div_ceil(CHUNK) {
            let len = CHUNK.min(d - c * CHUNK) * w;
            for p in &prgs {
                p.keystream(c as u64, &mut buf[..len]);
            }
        }
        prg_total += t.elapsed();
    }
    let live: Vec<&Site> = sites.iter().filter(|s| s.client.is_some()).collect();
    let k = live.len();
    let client_total: Duration = sites.iter().map(|s| s.time).sum();
    RoundStats {
        client_mean: live.iter().map(|s| s.time).sum::<Duration>() / k as u32,
        client_max: live.iter().map(|s| s.time).max().unwrap_or_default(),
        prg_alone_mean: prg_total / sample.len().max(1) as u32,
        coordinator: coord,
        wall,
        // The unmasking runs on threads() threads: count its wall time once per thread (an
        // upper bound on its CPU time), so the total stays a CPU-time figure.
        total_compute: client_total + coord + t_finish * (threads() as u32 - 1),
        process_cpu: cpu1.zip(cpu0).map(|(b, a)| b.saturating_sub(a)),
        bytes_mean: live.iter().map(|s| s.sent as f64).sum::<f64>() / k as f64,
        share_bytes_mean: live.iter().map(|s| s.share_bytes as f64).sum::<f64>() / k as f64,
        masks_mean: live.iter().map(|s| s.masks as f64).sum::<f64>() / k as f64,
        survivors: survivors.len(),
        fold: t_fold,
        finish: t_finish,
    }
}

/// Replays the recorded messages into a fresh coordinator; returns its peak live bytes.
fn coordinator_peak(setup: &RoundSetup, rec: &Recording, via_bytes: bool) -> usize {
    let base = CUR.load(Relaxed);
    PEAK.store(base, Relaxed);
    {
        let mut server = Server::new(setup).expect("server");
        for b in &rec.keys {
            server
                .add_keys(AdvertiseKeys::from_bytes(b).expect("decode"))
                .expect("keys");
        }
        drop(server.keys_done().expect("keys_done"));
        for (i, sh) in &rec.shares {
            server
                .add_shares(
                    *i,
                    sh.iter()
                        .map(|b| EncryptedShare::from_bytes(b).expect("decode"))
                        .collect(),
                )
                .expect("shares");
        }
        drop(server.shares_done().expect("shares_done"));
        for m in &rec.masked {
            if via_bytes {
                server.add_masked_bytes(m).expect("add_masked");
            } else {
                server
                    .add_masked(MaskedInput::from_bytes(m).expect("decode"))
                    .expect("add_masked");
            }
        }
        drop(server.masked_done().expect("masked_done"));
        for r in &rec.unmask {
            server
                .add_unmask(UnmaskResponse::from_bytes(r).expect("decode"))
                .expect("add_unmask");
        }
        drop(server.finish().expect("finish"));
    }
    PEAK.load(Relaxed) - base
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let n = env("SECAGG_BENCH_SITES", 100);
    let d = env("SECAGG_BENCH_DIM", 1_000_000);
    let reps = env("SECAGG_BENCH_REPS", 3);
    let bits = 32;
    let round_id = fedcare_secagg::crypto::sha256(&[b"benchmark job", &1u64.to_be_bytes()]);
    let mut rng = SystemRng::new();
    let ids: Vec<IdentityKey> = (0..n)
        .map(|_| IdentityKey::generate(&mut rng).expect("identity"))
        .collect();
    let sites: Vec<(String, Vec<u8>)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (format!("site-{i}"), id.public_key()))
        .collect();
    let chosen = Params::choose(n, d, bits, 0.1, 0.05, graph_seed(&round_id)).expect("params");
    let complete_t = (n - 1 + n / 20) / 2 + 1;
    let variants = [
        ("k-regular, Params::choose(δ = 0.1, γ = 0.05)", chosen, reps),
        (
            "all-to-all (complete graph)",
            Params {
                bits,
                dim: d,
                threshold: complete_t,
                graph: Graph::Complete,
            },
            1,
        ),
    ];
    println!(
        "secure aggregation round: n = {n}, d = {d}, b = {bits}, {} dropouts after share exchange, {} threads",
        n / 10,
        threads()
    );
    for (name, params, reps) in variants {
        let setup = RoundSetup::new(round_id, sites.clone(), params.clone()).expect("setup");
        let mut ordered: Vec<IdentityKey> = Vec::new();
        for e in &setup.sites {
            let pos = ids
                .iter()
                .position(|id| id.public_key() == e.identity_public_key)
                .expect("identity");
            ordered.push(IdentityKey::from_pkcs8(ids[pos].pkcs8()).expect("identity"));
        }
        let dropped: Vec<u32> = (0..n as u32).filter(|i| i % 10 == 3).collect();
        let mut runs = Vec::new();
        let mut rec = Recording::default();
        for _ in 0..reps {
            rec = Recording::default();
            runs.push(run_round(&setup, &ordered, &dropped, &mut rec));
        }
        runs.sort_by_key(|r| r.wall);
        let r = &runs[runs.len() / 2];
        let peak = coordinator_peak(&setup, &rec, true);
        let peak_struct = coordinator_peak(&setup, &rec, false);
        let payload = (d * bits as usize / 8) as f64;
        let (k, t) = match params.graph {
            Graph::Complete => (n - 1, params.threshold),
            Graph::Regular { k, .. } => (k as usize, params.threshold),
        };
        println!(
            "\n== {name}: k = {k}, t = {t}, survivors = {} (median of {reps})",
            r.survivors
        );
        println!(
            "  per-site client time     mean {}, max {}",
            ms(r.client_mean),
            ms(r.client_max)
        );
        println!(
            "  PRG alone for its masks  {} ({:.1} masks of d) -> client/PRG = {:.2}",
            ms(r.prg_alone_mean),
            r.masks_mean,
            r.client_mean.as_secs_f64() / r.prg_alone_mean.as_secs_f64()
        );
        println!(
            "  coordinator time         {} (folding {} masked inputs: {}, finish: {})",
            ms(r.coordinator),
            r.survivors,
            ms(r.fold),
            ms(r.finish)
        );
        println!(
            "  bytes sent per site      {:.0} (d b/8 = {payload:.0}, shares {:.0}) -> {:.4}x of d b/8 + shares",
            r.bytes_mean,
            r.share_bytes_mean,
            r.bytes_mean / (payload + r.share_bytes_mean)
        );
        println!(
            "  coordinator peak memory  {:.1} MiB via add_masked_bytes, {:.1} MiB via add_masked(MaskedInput) (d b/8 = {:.1} MiB)",
            peak as f64 / 1048576.0,
            peak_struct as f64 / 1048576.0,
            payload / 1048576.0
        );
        println!(
            "  total compute            {} (all sites + coordinator, CPU time; unmasking counted x{})",
            ms(r.total_compute),
            threads()
        );
        if let Some(p) = r.process_cpu {
            println!(
                "  process CPU in the round {} (incl. harness: inputs, encoding)",
                ms(p)
            );
        }
        println!(
            "  round wall clock         {} on {} threads",
            ms(r.wall),
            threads()
        );
    }
}
