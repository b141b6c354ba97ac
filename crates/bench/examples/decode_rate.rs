//! How fast one thread decodes phone photos, with and without DCT scaling.
//!
//! ```sh
//! cargo run --release -p verger-bench --example decode_rate            # 8 generated 4032x3024 JPEGs
//! cargo run --release -p verger-bench --example decode_rate -- --images 16 --rounds 5 --size 2000x1500
//! cargo run --release -p verger-bench --example decode_rate -- photos/*.jpg   # your own files
//! cargo run --release -p verger-bench --example decode_rate -- --save /tmp/phone   # keep the generated files
//! ```
//!
//! Without files it makes phone-sized JPEGs from the shared Fruits-360 and
//! grocery images (upscaled, noise added, quality 90: about 2 MB at
//! 4032x3024; see `verger_bench::photos`), in memory. Every step runs on
//! this thread, each measured over all the images in turn, `--rounds` times:
//! decode only (`decode_rgb`), then decode + resize + normalise
//! (`preprocess_into`), each with `scaled_jpeg_decode` off (every pixel, as
//! before) and on. Rates are per CPU second of this thread, which other
//! processes on the machine barely disturb; the wall-clock rate is shown too.

use verger_bench::photos as phone;

use std::path::PathBuf;
use std::time::Instant;

use verger_image::{PreprocessConfig, TENSOR_LEN, decode_rgb, preprocess_into, rgb_to_tensor_into};

fn main() {
    let mut images = 8usize;
    let mut rounds = 3usize;
    let mut size = phone::PHONE;
    let mut files: Vec<PathBuf> = Vec::new();
    let mut save: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--images" => images = value().parse().unwrap_or_else(|_| usage("--images N")),
            "--rounds" => rounds = value().parse().unwrap_or_else(|_| usage("--rounds N")),
            "--size" => {
                let v = value();
                let (w, h) = v.split_once('x').unwrap_or_else(|| usage("--size WxH"));
                size = (
                    w.parse().unwrap_or_else(|_| usage("--size WxH")),
                    h.parse().unwrap_or_else(|_| usage("--size WxH")),
                );
            }
            "--save" => save = Some(PathBuf::from(value())),
            "-h" | "--help" => usage(""),
            _ if arg.starts_with('-') => usage(&format!("unknown flag {arg}")),
            _ => files.push(PathBuf::from(arg)),
        }
    }

    let inputs: Vec<Vec<u8>> = if files.is_empty() {
        let shared = phone::shared_dir();
        let fruits = phone::pick_images(
            &shared.join("datasets/fruits360-sample/Test"),
            images.div_ceil(2),
        )
        .expect("the shared Fruits-360 sample");
        let grocery = phone::pick_images(
            &shared.join("datasets/grocery-photos/fruit/Validation"),
            images / 2,
        )
        .expect("the shared grocery photos");
        println!(
            "making {images} {}x{} JPEGs from the shared images...",
            size.0, size.1
        );
        fruits
            .iter()
            .chain(&grocery)
            .enumerate()
            .map(|(i, p)| phone::phone_jpeg(p, size, i as u64).expect("a phone-sized JPEG"))
            .collect()
    } else {
        files
            .iter()
            .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .collect()
    };
    if let Some(dir) = &save {
        // The same files for another decoder (e.g. Pillow) to time.
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for (i, bytes) in inputs.iter().enumerate() {
            let path = dir.join(format!("photo-{i:03}.jpg"));
            std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        println!("saved {} JPEGs in {}", inputs.len(), dir.display());
    }
    let mean_mb = inputs.iter().map(|b| b.len() as f64).sum::<f64>() / inputs.len() as f64 / 1e6;

    let scaled = PreprocessConfig::default();
    let full = PreprocessConfig {
        scaled_jpeg_decode: false,
        ..PreprocessConfig::default()
    };
    let first = |cfg| {
        decode_rgb(&inputs[0], cfg)
            .unwrap_or_else(|e| panic!("first image: {e}"))
            .dimensions()
    };
    let (full_size, scaled_size) = (first(&full), first(&scaled));
    println!(
        "{} images, {mean_mb:.2} MB each on average, {rounds} rounds, one thread",
        inputs.len()
    );
    println!(
        "first image: {}x{} in full, {}x{} scaled\n",
        full_size.0, full_size.1, scaled_size.0, scaled_size.1
    );

    let decoded: Vec<_> = inputs
        .iter()
        .map(|b| decode_rgb(b, &scaled).unwrap())
        .collect();
    let steps = [
        "decode, every pixel (before)",
        "decode, DCT-scaled",
        "decode + resize, every pixel (before)",
        "decode + resize, DCT-scaled",
        "resize + normalise of the scaled decode",
    ];
    let mut tensor = vec![0.0f32; TENSOR_LEN];
    let mut run = |step: usize, i: usize| match step {
        0 => drop(decode_rgb(&inputs[i], &full).unwrap()),
        1 => drop(decode_rgb(&inputs[i], &scaled).unwrap()),
        2 => preprocess_into(&inputs[i], &full, &mut tensor).unwrap(),
        3 => preprocess_into(&inputs[i], &scaled, &mut tensor).unwrap(),
        _ => rgb_to_tensor_into(&decoded[i], &mut tensor),
    };

    let n = inputs.len();
    let mut cpu = vec![0.0f64; steps.len()];
    let mut wall = vec![0.0f64; steps.len()];
    for _ in 0..rounds {
        // Interleaved, so a burst of load elsewhere hits every step alike.
        for s in 0..steps.len() {
            let (c0, w0) = (thread_cpu_seconds(), Instant::now());
            for i in 0..n {
                run(s, i);
            }
            cpu[s] += thread_cpu_seconds() - c0;
            wall[s] += w0.elapsed().as_secs_f64();
        }
    }
    let count = (n * rounds) as f64;
    println!(
        "{:<42} {:>10} {:>10} {:>11}",
        "step", "images/s", "ms/image", "wall img/s"
    );
    for (s, name) in steps.iter().enumerate() {
        println!(
            "{name:<42} {:>10.1} {:>10.2} {:>11.1}",
            count / cpu[s],
            1000.0 * cpu[s] / count,
            count / wall[s]
        );
    }
    println!(
        "\nDCT scaling: decode {:.2}x, decode + resize {:.2}x as fast",
        cpu[0] / cpu[1],
        cpu[2] / cpu[3]
    );
}

/// CPU time used by this thread so far.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("decode_rate: {problem}");
    }
    eprintln!(
        "usage: decode_rate [--images N] [--rounds N] [--size WxH] [--save DIR] [FILE.jpg...]"
    );
    std::process::exit(2)
}
