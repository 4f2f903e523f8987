//! Tests of the distributed discrete Gaussian encoder (fixed seeds; tolerances stated per test).

use fedcare_privacy::ddg::{DEFAULT_BETA, fwht};
use fedcare_privacy::{DdgCalibration, DdgEncoder, DdgParams, DistributedNoise, PrivacyError, default_orders};
use rand::Rng;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn params(dim: usize, bits: u32, clip: f64, scale: f64, sigma: f64) -> DdgParams {
    DdgParams { dim, bits, l2_clip: clip, scale, beta: DEFAULT_BETA, local_sigma: sigma, rotation_seed: [7; 32], noise: DistributedNoise::DiscreteGaussian }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum::<f64>().sqrt()
}

/// Sum of encodings mod 2^bits.
fn modsum(enc: &DdgEncoder, vs: &[Vec<u64>]) -> Vec<u64> {
    let bits = enc.params().bits;
    let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
    let mut s = vec![0u64; enc.encoded_len()];
    for v in vs {
        for (a, b) in s.iter_mut().zip(v) {
            *a = a.wrapping_add(*b) & mask;
        }
    }
    s
}

#[test]
fn hadamard_matches_matrix_and_is_orthonormal() {
    // fwht equals the explicit matrix (-1)^popcount(i&j)/sqrt(n) to 1e-12.
    let n = 16;
    let mut r = rng(1);
    let x: Vec<f64> = (0..n).map(|_| r.random_range(-1.0..1.0)).collect();
    let mut y = x.clone();
    fwht(&mut y);
    for (i, yi) in y.iter().enumerate() {
        let e: f64 = (0..n)
            .map(|j| if (i & j).count_ones() % 2 == 0 { x[j] } else { -x[j] } / (n as f64).sqrt())
            .sum();
        assert!((yi - e).abs() < 1e-12, "{i}: {yi} vs {e}");
    }
    // Rotation H D: norm preserved and inverse recovers x, relative error <= 1e-12, sizes 1..4096.
    for (k, dim) in [1usize, 2, 8, 64, 1000, 4096].into_iter().enumerate() {
        let enc = DdgEncoder::new(params(dim, 32, 1.0, 1.0, 0.0)).unwrap();
        for t in 0..5 {
            let mut r = rng(100 + 10 * k as u64 + t);
            let x: Vec<f64> = (0..dim).map(|_| r.random_range(-10.0..10.0)).collect();
            let y = enc.rotate(&x);
            assert_eq!(y.len(), dim.next_power_of_two());
            let nx = norm(&x);
            assert!((norm(&y) - nx).abs() <= 1e-12 * nx, "dim {dim}: norm {} vs {nx}", norm(&y));
            let back = enc.unrotate(&y);
            for (j, b) in back.iter().enumerate() {
                let want = if j < dim { x[j] } else { 0.0 };
                assert!((b - want).abs() <= 1e-12 * nx, "dim {dim} coord {j}: {b} vs {want}");
            }
        }
    }
    // D is not the identity (signs really drawn) and depends on the seed.
    let a = DdgEncoder::new(params(64, 32, 1.0, 1.0, 0.0)).unwrap();
    let mut p = params(64, 32, 1.0, 1.0, 0.0);
    p.rotation_seed = [8; 32];
    let b = DdgEncoder::new(p).unwrap();
    let e0: Vec<f64> = (0..64).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
    assert_ne!(a.rotate(&e0), b.rotate(&e0));
}

#[test]
fn clipping_scales_to_norm_c() {
    // Norm after clipping equals c to 1e-12 relative; direction kept; short inputs untouched.
    let enc = DdgEncoder::new(params(5, 32, 2.0, 100.0, 0.0)).unwrap();
    let x = [3.0f32, 4.0, 0.0, -12.0, 0.0]; // norm 13
    let c = enc.clip(&x).unwrap();
    assert!((norm(&c) - 2.0).abs() <= 1e-12 * 2.0, "{}", norm(&c));
    for (a, b) in c.iter().zip(x) {
        assert!((a - f64::from(b) * 2.0 / 13.0).abs() < 1e-12);
    }
    let small = [0.5f32, 0.0, 0.0, 0.0, -0.5];
    assert_eq!(enc.clip(&small).unwrap(), vec![0.5, 0.0, 0.0, 0.0, -0.5]);
}

#[test]
fn noiseless_sum_decodes_within_rounding_bound() {
    // 10 sites, dim 100 (d' = 128), c = 1, scale 1e5, 40 bits, no noise. Every coordinate's
    // error <= error_bound(10) = 10 gamma sqrt(128) + f32 slack (~1.1e-3), deterministically;
    // the RMS error <= 1.5 gamma sqrt(n/4) (each site's per-coordinate rounding variance <=
    // 1/4 after the orthonormal rotation; 1.5 leaves room for 100-coordinate sampling noise).
    let n = 10;
    let enc = DdgEncoder::new(params(100, 40, 1.0, 1e5, 0.0)).unwrap();
    let mut r = rng(2);
    let inputs: Vec<Vec<f32>> = (0..n)
        .map(|i| (0..100).map(|_| r.random_range(-0.3f32..0.3) * (i as f32 + 1.0) / 3.0).collect())
        .collect();
    let mut true_sum = vec![0.0f64; 100];
    for x in &inputs {
        for (s, v) in true_sum.iter_mut().zip(enc.clip(x).unwrap()) {
            *s += v;
        }
    }
    let encoded: Vec<Vec<u64>> = inputs.iter().map(|x| enc.encode(x, &mut r).unwrap()).collect();
    let dec = enc.decode_sum(&modsum(&enc, &encoded), n);
    assert_eq!(dec.len(), 100);
    let bound = f64::from(enc.error_bound(n));
    assert!(bound < 2e-3, "{bound}");
    let mut sq = 0.0;
    for (d, t) in dec.iter().zip(&true_sum) {
        let e = f64::from(*d) - t;
        assert!(e.abs() <= bound, "{d} vs {t}");
        sq += e * e;
    }
    let rms = (sq / 100.0).sqrt();
    assert!(rms <= 1.5 * 1e-5 * (n as f64 / 4.0).sqrt(), "rms {rms}");
    // The sum is not trivially small compared with the bound (the test can fail).
    assert!(true_sum.iter().map(|v| v.abs()).fold(0.0, f64::max) > 100.0 * bound);
}

#[test]
fn noisy_sum_is_unbiased_with_the_right_variance() {
    noisy_sum_check(DistributedNoise::DiscreteGaussian);
}

#[test]
fn skellam_noisy_sum_is_unbiased_with_the_right_variance() {
    // Skellam(4.5, 4.5) has variance exactly 9 = local_sigma^2: the same bounds apply.
    noisy_sum_check(DistributedNoise::Skellam);
}

fn noisy_sum_check(noise: DistributedNoise) {
    // n = 5 sites, dim 16, c = 1, scale 10 (gamma 0.1), local_sigma 3, 24 bits, T = 2000
    // trials, each with its own rng seed. Error e = decode - sum of clipped.
    // * Mean per coordinate within 4 standard errors sqrt(v_hi / T) of 0 (16 checks), and
    //   the grand mean within 4 sqrt(v_hi / (16 T)).
    // * Empirical variance over all 32000 errors within [v_lo (1 - t), v_hi (1 + t)], with
    //   v_lo = gamma^2 n sigma^2 (noise only), v_hi = gamma^2 (n sigma^2 + n/4) (plus the
    //   rounding variance, <= 1/4 per site and coordinate) and t = 4 sqrt(2/32000) = 0.032.
    let (n, dim, t_trials) = (5usize, 16usize, 2000usize);
    let enc = DdgEncoder::new(DdgParams { noise, ..params(dim, 24, 1.0, 10.0, 3.0) }).unwrap();
    let mut r = rng(3);
    let inputs: Vec<Vec<f32>> =
        (0..n).map(|_| (0..dim).map(|_| r.random_range(-0.5f32..0.5)).collect()).collect();
    let mut true_sum = vec![0.0f64; dim];
    for x in &inputs {
        for (s, v) in true_sum.iter_mut().zip(enc.clip(x).unwrap()) {
            *s += v;
        }
    }
    let gamma = 0.1;
    let v_lo = gamma * gamma * n as f64 * 9.0;
    let v_hi = gamma * gamma * (n as f64 * 9.0 + n as f64 / 4.0);
    let mut sum_e = vec![0.0f64; dim];
    let mut sum_e2 = 0.0;
    for t in 0..t_trials {
        let mut tr = rng(10_000 + t as u64);
        let enc_v: Vec<Vec<u64>> = inputs.iter().map(|x| enc.encode(x, &mut tr).unwrap()).collect();
        let dec = enc.decode_sum(&modsum(&enc, &enc_v), n);
        for j in 0..dim {
            let e = f64::from(dec[j]) - true_sum[j];
            sum_e[j] += e;
            sum_e2 += e * e;
        }
    }
    let tf = t_trials as f64;
    for (j, s) in sum_e.iter().enumerate() {
        let mean = s / tf;
        assert!(mean.abs() <= 4.0 * (v_hi / tf).sqrt(), "{noise:?} coord {j}: mean error {mean}");
    }
    let total = (t_trials * dim) as f64;
    let grand = sum_e.iter().sum::<f64>() / total;
    assert!(grand.abs() <= 4.0 * (v_hi / total).sqrt(), "{noise:?}: grand mean {grand}");
    let var = sum_e2 / total - grand * grand;
    let tol = 4.0 * (2.0 / total).sqrt();
    assert!(var >= v_lo * (1.0 - tol) && var <= v_hi * (1.0 + tol), "{noise:?}: var {var} not in [{v_lo}, {v_hi}] +- {tol}");
    assert!((enc.noise_std(n).powi(2) - v_lo).abs() < 1e-12);
}

#[test]
fn conditional_rounding_bound_holds() {
    // Noiseless encodings at 32 bits are the rounded vectors z themselves: every one must
    // satisfy ||z||_2 <= Delta_2 (no tolerance). beta = 0.99 makes the bound tight enough that
    // plain stochastic rounding of the same vectors violates it in this batch (asserted), so
    // the check has teeth; beta = e^-0.5 is the paper's default.
    for beta in [0.99, DEFAULT_BETA] {
        let mut p = params(16, 32, 1.0, 100.0, 0.0);
        p.beta = beta;
        let enc = DdgEncoder::new(p.clone()).unwrap();
        let delta2 = p.l2_sensitivity();
        let mut r = rng(4);
        let mut plain_violations = 0;
        for _ in 0..300 {
            let x: Vec<f32> = (0..16).map(|_| r.random_range(-1.0f32..1.0)).collect();
            let z: Vec<i64> = enc.encode(&x, &mut r).unwrap().into_iter().map(|v| enc.to_signed(v)).collect();
            let nz = z.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            assert!(nz <= delta2, "beta {beta}: ||z|| = {nz} > Delta_2 = {delta2}");
            // Plain stochastic rounding of the same scaled vector, for comparison.
            let y = enc.rotate(&enc.clip(&x).unwrap());
            let plain: f64 = y
                .iter()
                .map(|v| {
                    let s = v * 100.0;
                    let f = s.floor();
                    let rr = if r.random::<f64>() < s - f { f + 1.0 } else { f };
                    rr * rr
                })
                .sum();
            if plain.sqrt() > delta2 {
                plain_violations += 1;
            }
        }
        if beta == 0.99 {
            assert!(plain_violations > 0, "bound never binding: test would be vacuous");
        }
    }
}

#[test]
fn modular_wrap_signed_mapping() {
    // 8 bits: residues 0..=127 are themselves, 128..=255 are r - 256. 64 bits: two's complement.
    let enc = DdgEncoder::new(params(1, 8, 100.0, 1.0, 0.0)).unwrap();
    for (v, s) in [(0u64, 0i64), (1, 1), (127, 127), (128, -128), (129, -127), (255, -1), (256, 0)] {
        assert_eq!(enc.to_signed(v), s, "{v}");
    }
    let e64 = DdgEncoder::new(params(1, 64, 100.0, 1.0, 0.0)).unwrap();
    assert_eq!(e64.to_signed(u64::MAX), -1);
    assert_eq!(e64.to_signed(1 << 63), i64::MIN);
    assert_eq!(e64.to_signed((1 << 63) - 1), i64::MAX);
    let e2 = DdgEncoder::new(params(1, 2, 100.0, 1.0, 0.0)).unwrap();
    assert_eq!((0..4).map(|v| e2.to_signed(v)).collect::<Vec<_>>(), vec![0, 1, -2, -1]);

    // End to end, dim 1 (H = [1], D = [+-1]), gamma 1, integer inputs (rounding is exact):
    // sums at the edges of [-128, 128) decode exactly; 128 wraps to -128 by design.
    let mut r = rng(5);
    let mut check = |x: f32, sites: usize, want: f32| {
        let v: Vec<Vec<u64>> = (0..sites).map(|_| enc.encode(&[x], &mut r).unwrap()).collect();
        let d = enc.decode_sum(&modsum(&enc, &v), sites);
        assert_eq!(d, vec![want], "{sites} x {x}");
    };
    check(42.0, 3, 126.0);
    check(-42.0, 3, -126.0);
    check(-32.0, 4, -128.0);
    check(31.0, 4, 124.0);
    check(63.0, 2, 126.0);
    check(-63.0, 2, -126.0);
    check(32.0, 4, -128.0); // 128 is outside the signed range: modular clipping
    // Hand-made sums at 8 bits decode as sign * signed value (sign = D's only entry).
    let s = enc.decode_sum(&[1], 1)[0];
    assert!(s == 1.0 || s == -1.0);
    assert_eq!(enc.decode_sum(&[127], 1), vec![127.0 * s]);
    assert_eq!(enc.decode_sum(&[128], 1), vec![-128.0 * s]);
    assert_eq!(enc.decode_sum(&[255], 1), vec![-s]);
}

#[test]
fn bad_parameters_are_typed_errors() {
    let ok = params(10, 32, 1.0, 10.0, 1.0);
    assert!(DdgEncoder::new(ok.clone()).is_ok());
    let is_param = |p: DdgParams, name: &str| match DdgEncoder::new(p) {
        Err(PrivacyError::InvalidParameter { name: n, .. }) => assert_eq!(n, name),
        other => panic!("expected InvalidParameter({name}), got {other:?}"),
    };
    for bits in [0u32, 1, 65] {
        is_param(DdgParams { bits, ..ok.clone() }, "bits");
    }
    for c in [f64::NAN, f64::INFINITY, 0.0, -1.0] {
        is_param(DdgParams { l2_clip: c, ..ok.clone() }, "l2_clip");
    }
    is_param(DdgParams { dim: 0, ..ok.clone() }, "dim");
    is_param(DdgParams { scale: f64::NAN, ..ok.clone() }, "scale");
    is_param(DdgParams { scale: 1e20, ..ok.clone() }, "scale");
    is_param(DdgParams { beta: 1.0, ..ok.clone() }, "beta");
    is_param(DdgParams { local_sigma: -1.0, ..ok.clone() }, "local_sigma");
    is_param(DdgParams { local_sigma: 1e9, ..ok.clone() }, "local_sigma");

    let enc = DdgEncoder::new(ok).unwrap();
    let mut r = rng(6);
    assert_eq!(enc.encode(&[0.0; 9], &mut r), Err(PrivacyError::InputLength { expected: 10, got: 9 }));
    let mut x = [0.1f32; 10];
    x[3] = f32::NAN;
    assert_eq!(enc.encode(&x, &mut r), Err(PrivacyError::NonFiniteInput { index: 3 }));
    x[3] = f32::INFINITY;
    assert_eq!(enc.encode(&x, &mut r), Err(PrivacyError::NonFiniteInput { index: 3 }));
    assert_eq!(enc.try_decode_sum(&[0; 10]), Err(PrivacyError::InputLength { expected: 16, got: 10 }));
    assert!(enc.decode_sum(&[0; 10], 1).iter().all(|v| v.is_nan()));
}

#[test]
fn calibration_and_accounting() {
    // Calibrated parameters: valid; noise multiplier w.r.t. Delta_2 >= z (to 1e-9); the modulus
    // equation 2^b = 2k sqrt(proxy)/gamma holds to 1e-6 relative; and one-site RDP equals
    // alpha Delta_2^2 / (2 sigma^2) (to 1e-12 relative).
    let cal = DdgCalibration {
        noise_multiplier: 1.0,
        n_min: 10,
        n_max: 20,
        bits: 20,
        dim: 1000,
        l2_clip: 1.0,
        beta: DEFAULT_BETA,
        k_stddevs: 4.0,
        noise: DistributedNoise::DiscreteGaussian,
    };
    let p = cal.params([9; 32]).unwrap();
    p.validate().unwrap();
    let d = p.padded_dim() as f64;
    let zeff = p.local_sigma * 10f64.sqrt() / p.l2_sensitivity();
    assert!(zeff >= 1.0 - 1e-9, "{zeff}");
    let g = p.gamma();
    let sigma_in = p.local_sigma * g;
    let proxy = (400.0 / d + g * g * 20.0 / 4.0 + 20.0 * sigma_in * sigma_in) / (g * g);
    let lhs = 2.0 * 4.0 * proxy.sqrt();
    assert!((lhs / 2f64.powi(20) - 1.0).abs() < 1e-6, "{lhs}");
    let enc = DdgEncoder::new(p.clone()).unwrap();
    let orders = default_orders();
    let one = enc.rdp_per_round(1, &orders).unwrap();
    let l2 = p.l2_sensitivity();
    for (a, e) in orders.iter().zip(&one) {
        let want = a * l2 * l2 / (2.0 * p.local_sigma.powi(2));
        assert!((e - want).abs() <= 1e-12 * want, "{a}: {e} vs {want}");
    }
    // More surviving sites: less privacy loss.
    let ten = enc.rdp_per_round(10, &orders).unwrap();
    assert!(ten.iter().zip(&one).all(|(t, o)| t < o));
    let acc = enc.accounting(10);
    assert_eq!((acc.n, acc.dim), (10, 1024));
    assert!(acc.l1 <= acc.l2 * acc.l2 && acc.l1 <= 32.0 * acc.l2 + 1e-9);
    // Unreachable: 4^bits <= n k^2.
    assert!(DdgCalibration { bits: 2, ..cal.clone() }.params([0; 32]).is_err());
    assert!(DdgCalibration { n_min: 0, ..cal }.params([0; 32]).is_err());
}

#[test]
fn skellam_calibration_and_accounting() {
    // Same calibration as the discrete Gaussian but the Skellam cap on the local std, a
    // Skellam charge, and an RDP never below the Gaussian mechanism's alpha Delta_2^2 / (2 V)
    // with V = n_min local_sigma^2 (the Skellam bound adds a non-negative surcharge), and
    // within 1% of it at these sizes.
    let cal = DdgCalibration {
        noise_multiplier: 1.0,
        n_min: 3,
        n_max: 4,
        bits: 32,
        dim: 5000,
        l2_clip: 1.0,
        beta: DEFAULT_BETA,
        k_stddevs: 4.0,
        noise: DistributedNoise::Skellam,
    };
    let p = cal.params([1; 32]).unwrap();
    assert_eq!(p.noise, DistributedNoise::Skellam);
    assert!(p.local_sigma <= fedcare_privacy::ddg::MAX_LOCAL_SIGMA_SKELLAM, "{}", p.local_sigma);
    let gaussian = DdgCalibration { noise: DistributedNoise::DiscreteGaussian, ..cal.clone() }.params([1; 32]).unwrap();
    assert!(gaussian.local_sigma > p.local_sigma, "with 32 bits the Gaussian cap (2^22) is the larger one");
    let enc = DdgEncoder::new(p.clone()).unwrap();
    let charge = enc.charge(3);
    assert!(matches!(charge, fedcare_privacy::Charge::DistributedSkellam { n: 3, .. }), "{charge:?}");
    let orders = default_orders();
    let rdp = enc.rdp_per_round(3, &orders).unwrap();
    let v = 3.0 * p.local_sigma * p.local_sigma;
    let l2 = p.l2_sensitivity();
    for (a, r) in orders.iter().zip(&rdp) {
        if a.fract() != 0.0 {
            assert!(r.is_infinite(), "fractional order {a} must be dropped");
            continue;
        }
        let g = a * l2 * l2 / (2.0 * v);
        assert!(*r >= g && *r <= g * 1.01, "order {a}: {r} vs Gaussian {g}");
    }
    // The noise really is Skellam with at least the stated variance: 20000 encodings of 0
    // at one coordinate (noise only, plus rounding of 0 = 0).
    let small = DdgEncoder::new(DdgParams { noise: DistributedNoise::Skellam, ..params(1, 40, 1.0, 1.0, 40.0) }).unwrap();
    let mut r = rng(8);
    let xs: Vec<f64> = (0..20_000).map(|_| small.to_signed(small.encode(&[0.0], &mut r).unwrap()[0]) as f64).collect();
    let var = xs.iter().map(|x| x * x).sum::<f64>() / xs.len() as f64;
    // Skellam variance 1600; sd of the sample second moment ~ sqrt((m4 - v^2)/N), m4 = v + 3 v^2.
    let tol = 4.417 * ((1600.0 + 2.0 * 1600.0f64.powi(2)) / 20_000.0).sqrt();
    assert!((var - 1600.0).abs() <= tol, "variance {var} vs 1600 +- {tol}");
}
