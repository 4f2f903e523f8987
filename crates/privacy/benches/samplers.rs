//! Throughput of the exact discrete Gaussian and Skellam samplers at variance 10^6, one
//! thread, ChaCha20 seeded from OS entropy. Run:
//! `cargo bench -p fedcare-privacy --bench samplers`

use fedcare_privacy::{DiscreteGaussian, Skellam};
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use std::hint::black_box;
use std::time::Instant;

/// Counts the 64-bit words drawn, to report the cost per sample in uniform draws.
struct Counting<R> {
    inner: R,
    words: u64,
}

impl<R: RngCore> RngCore for Counting<R> {
    fn next_u32(&mut self) -> u32 {
        self.words += 1;
        self.inner.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.words += 1;
        self.inner.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.words += dst.len().div_ceil(8) as u64;
        self.inner.fill_bytes(dst)
    }
}
impl<R: CryptoRng> CryptoRng for Counting<R> {}

fn os_seeded() -> ChaCha20Rng {
    ChaCha20Rng::try_from_rng(&mut rand::rngs::OsRng).expect("OS entropy")
}

fn main() {
    let n: usize = std::env::var("BENCH_SAMPLES").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000_000);
    let dg = DiscreteGaussian::new(1_000_000, 1).expect("valid sigma^2");
    let mut rng = os_seeded();
    let mut buf = vec![0i64; 1 << 16];

    // Warm-up.
    dg.fill(&mut rng, &mut buf);

    let start = Instant::now();
    let mut done = 0;
    while done < n {
        dg.fill(&mut rng, &mut buf);
        black_box(&buf);
        done += buf.len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "discrete_gaussian sigma^2=1e6: {done} samples in {secs:.3} s = {:.2} M samples/s (1 thread)",
        done as f64 / secs / 1e6
    );

    // Raw generator speed, through the same `dyn CryptoRng` call the samplers make.
    let words = 100_000_000u64;
    let r: &mut dyn CryptoRng = &mut rng;
    let start = Instant::now();
    let mut acc = 0u64;
    for _ in 0..words {
        acc = acc.wrapping_add(r.next_u64());
    }
    black_box(acc);
    let secs = start.elapsed().as_secs_f64();
    println!("ChaCha20Rng next_u64 via dyn: {:.1} M words/s ({:.2} ns/word)", words as f64 / secs / 1e6, secs * 1e9 / words as f64);

    // Draws per sample.
    let mut counting = Counting { inner: os_seeded(), words: 0 };
    let m = 1_000_000;
    for _ in 0..m {
        black_box(dg.sample(&mut counting));
    }
    println!("uniform 64-bit draws per discrete Gaussian sample: {:.2}", counting.words as f64 / m as f64);

    // Skellam with the same variance (mu = 5e5 per Poisson), at the calibration's cap on the
    // local std (2^18: mu = 2^35), and at the sampler's largest mean.
    for (mu, label, k) in [
        (500_000u64, "skellam variance=1e6 (mu=5e5)", n / 4),
        (1u64 << 35, "skellam mu=2^35 (local sigma 2^18, the calibration cap)", n / 4),
        (1u64 << 43, "skellam mu=2^43 (the sampler's limit is 2^44)", n / 40),
    ] {
        let start = Instant::now();
        let sk = Skellam::new(mu, 1).expect("valid mu");
        let build = start.elapsed().as_secs_f64();
        let mut out = vec![0i64; 1 << 16];
        let start = Instant::now();
        let mut done = 0;
        while done < k {
            sk.fill(&mut rng, &mut out);
            black_box(&out);
            done += out.len();
        }
        let secs = start.elapsed().as_secs_f64();
        println!("{label}: table built in {:.1} ms; {done} samples in {secs:.3} s = {:.2} M samples/s (1 thread)", build * 1e3, done as f64 / secs / 1e6);
    }
    let mut counting = Counting { inner: os_seeded(), words: 0 };
    let sk = Skellam::new(500_000, 1).expect("valid mu");
    for _ in 0..m {
        black_box(sk.sample(&mut counting));
    }
    println!("uniform 64-bit draws per Skellam sample (mu=5e5): {:.2}", counting.words as f64 / m as f64);
}
