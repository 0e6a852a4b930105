//! `cktrace bench stock`: untraced `cktrace run` against stock llama.cpp.
//!
//! A tracer is trusted when it does not change what it measures, so the
//! untraced engine must decode as fast as llama.cpp does on its own. The
//! stock side is the same pinned llama.cpp source built without our patch
//! series and with llama.cpp's own CMake defaults (OpenMP, native flags,
//! llamafile, repack; shared libraries), driven by a plain C-API decode loop
//! (`stock_driver.c`, the way llama.cpp's `simple` example does it). It is
//! built on first use into a cache directory, not by `build.rs`, so that
//! ordinary builds and CI do not pay for a second llama.cpp.
//!
//! Both sides run as fresh processes, alternately (the order flips every
//! pair), each reporting the wall time of its single-token decodes after the
//! prompt; the ratio of medians and the median of paired ratios are printed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use super::{fmt_list, median, paired_ratio, BenchArgs};

/// The driver's source, compiled into the binary so the bench needs nothing
/// but the llama.cpp tree the binary was built from.
const DRIVER_SRC: &str = include_str!("stock_driver.c");

/// CMake options of the stock build: only switches that keep llama.cpp's
/// tests, tools, examples and network code out (their sources are not all in
/// the pin); every library default stays as llama.cpp ships it.
const CMAKE_ARGS: &[&str] = &[
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_COMMON=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
];

/// Where the stock build lives: `$CKTRACE_STOCK_DIR`, else
/// `~/.cache/cktrace/stock/<key>`, the key naming the source and the recipe.
fn stock_dir(src: &Path) -> PathBuf {
    if let Some(d) = std::env::var_os("CKTRACE_STOCK_DIR") {
        return PathBuf::from(d);
    }
    let key = {
        // FNV-1a over what decides the build's bytes.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: &[u8]| {
            for &x in b {
                h = (h ^ x as u64).wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(env!("CKTRACE_LLAMA_SOURCE").as_bytes());
        eat(src.as_os_str().as_encoded_bytes());
        eat(DRIVER_SRC.as_bytes());
        for a in CMAKE_ARGS {
            eat(a.as_bytes());
        }
        format!("{h:016x}")
    };
    let base = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache"))
        .unwrap_or_else(std::env::temp_dir);
    base.join("cktrace/stock").join(key)
}

fn run_tool(c: &mut Command, what: &str, log: &Path) -> Result<()> {
    let o = c
        .output()
        .with_context(|| format!("{what}: cannot start"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let _ = std::fs::write(log, &text);
    if !o.status.success() {
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        bail!(
            "{what} failed (log in {}): {}",
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(())
}

/// Build (once) the unpatched llama.cpp and the driver; returns the driver.
pub fn ensure_stock() -> Result<PathBuf> {
    let src = PathBuf::from(env!("CKTRACE_LLAMA_SRC_DIR"));
    if !src.join("CMakeLists.txt").is_file() {
        bail!(
            "the llama.cpp source this binary was built from is gone ({}): run `vendor/fetch.sh`",
            src.display()
        );
    }
    let dir = stock_dir(&src);
    let driver = dir.join("stock_driver");
    if driver.is_file() {
        return Ok(driver);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let build = dir.join("build");
    eprintln!(
        "bench stock: building stock llama.cpp from {} into {} (once; several minutes)",
        src.display(),
        build.display()
    );
    run_tool(
        Command::new("cmake")
            .arg("-S")
            .arg(&src)
            .arg("-B")
            .arg(&build)
            .args(CMAKE_ARGS),
        "cmake configure of stock llama.cpp",
        &dir.join("configure.log"),
    )?;
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    run_tool(
        Command::new("cmake").arg("--build").arg(&build).args([
            "--target",
            "llama",
            "-j",
            &jobs.to_string(),
        ]),
        "cmake build of stock llama.cpp",
        &dir.join("build.log"),
    )?;
    let c_src = dir.join("stock_driver.c");
    std::fs::write(&c_src, DRIVER_SRC).with_context(|| format!("writing {}", c_src.display()))?;
    let lib = build.join("bin");
    let tmp = dir.join("stock_driver.tmp");
    run_tool(
        Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&tmp)
            .arg(&c_src)
            .arg(format!("-I{}", src.join("include").display()))
            .arg(format!("-I{}", src.join("ggml/include").display()))
            .arg(format!("-L{}", lib.display()))
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .args(["-lllama", "-lggml", "-lggml-base"]),
        "compiling the stock driver",
        &dir.join("driver.log"),
    )?;
    std::fs::rename(&tmp, &driver)?;
    Ok(driver)
}

/// Decode tok/s from the stock driver's `decode N SECONDS TPS` line.
fn stock_once(driver: &Path, a: &BenchArgs, n: usize) -> Result<f64> {
    let o = Command::new(driver)
        .arg(&a.model)
        .arg(a.threads.to_string())
        .arg(n.to_string())
        .arg(CTX.to_string())
        .arg(a.flash_attn.as_str())
        .arg(&a.prompt)
        .output()
        .with_context(|| format!("running {}", driver.display()))?;
    let out = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        bail!(
            "the stock driver failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    out.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "decode").then_some(())?;
            let steps: f64 = w.next()?.parse().ok()?;
            let secs: f64 = w.next()?.parse().ok()?;
            Some(steps / secs)
        })
        .with_context(|| format!("the stock driver printed no decode line: {out}"))
}

/// Decode tok/s of `cktrace run` (untraced) from its timing line.
fn run_once(a: &BenchArgs, n: usize) -> Result<f64> {
    let me = std::env::current_exe().context("locating this binary")?;
    let o = Command::new(&me)
        .arg("run")
        .arg(&a.model)
        .args(["-p", &a.prompt, "--raw", "--ignore-eos"])
        .args(["-n", &(n + 1).to_string()])
        .args(["-t", &a.threads.to_string()])
        .args(["--ctx", &CTX.to_string()])
        .args(["--flash-attn", a.flash_attn.as_str()])
        .output()
        .context("running cktrace run")?;
    let out = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        bail!(
            "cktrace run failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    // "... (128 decode steps in 1.234 s)"
    out.lines()
        .rev()
        .find_map(|l| {
            let (_, tail) = l.rsplit_once('(')?;
            let mut w = tail.split_whitespace();
            let steps: f64 = w.next()?.parse().ok()?;
            let secs: f64 = w.nth(3)?.parse().ok()?;
            Some(steps / secs)
        })
        .context("cktrace run printed no timing line")
}

/// The context both sides create (cktrace run's default).
const CTX: u32 = 2048;

pub fn bench_stock(a: &BenchArgs) -> Result<()> {
    if a.no_amx {
        bail!(
            "bench stock: --no-amx needs cktrace's patch 0003, which the stock build does not have"
        );
    }
    let driver = ensure_stock()?;
    println!(
        "bench stock: {}, {} threads, {} decode steps x {} alternating process pairs, flash attention {}",
        a.model.display(),
        a.threads,
        a.n,
        a.reps,
        a.flash_attn.as_str()
    );
    println!(
        "  stock: {} without patches, llama.cpp's CMake defaults, driver {}",
        env!("CKTRACE_LLAMA_SOURCE"),
        driver.display()
    );
    // Warm-up: page the model in, settle the clocks.
    stock_once(&driver, a, 8)?;
    run_once(a, 8)?;
    let (mut stock, mut run) = (Vec::new(), Vec::new());
    for i in 0..a.reps {
        if i % 2 == 0 {
            stock.push(stock_once(&driver, a, a.n)?);
            run.push(run_once(a, a.n)?);
        } else {
            run.push(run_once(a, a.n)?);
            stock.push(stock_once(&driver, a, a.n)?);
        }
    }
    let (ms, mr) = (median(&stock), median(&run));
    println!(
        "stock C-API loop   median {ms:8.1} tok/s   [{}]",
        fmt_list(&stock)
    );
    println!(
        "cktrace run        median {mr:8.1} tok/s   [{}]",
        fmt_list(&run)
    );
    println!(
        "ratio run/stock: {:.3} of the medians, {:.3} median of paired runs",
        mr / ms,
        paired_ratio(&run, &stock)
    );
    Ok(())
}
