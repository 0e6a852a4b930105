//! Machine facts for `meta.json`, read at run time from /proc and /sys (the
//! analysis may happen on another machine): CPU model and flags, cores,
//! caches, page size, transparent huge pages, kernel, memory. Whatever the
//! kernel does not expose stays empty; nothing here fails.

use std::fs;
use std::path::Path;

use cktrace_tracer::{CacheInfo, Machine};

fn read(p: impl AsRef<Path>) -> String {
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `32K` / `1024K` / `32M` -> bytes.
fn size(s: &str) -> u64 {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().map(|n| n * mul).unwrap_or(0)
}

/// The facts of this machine; `threads_used` is what the engine runs with.
pub fn collect(threads_used: u32) -> Machine {
    let cpuinfo = read("/proc/cpuinfo");
    let field = |key: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let logical = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count() as u32;
    let mut cores: Vec<(String, String)> = Vec::new();
    let (mut phys, mut core) = (String::new(), String::new());
    for l in cpuinfo.lines() {
        if let Some((k, v)) = l.split_once(':') {
            match k.trim() {
                "physical id" => phys = v.trim().to_string(),
                "core id" => core = v.trim().to_string(),
                _ => {}
            }
        }
        if l.trim().is_empty() && !core.is_empty() {
            cores.push((phys.clone(), core.clone()));
        }
    }
    if !core.is_empty() {
        cores.push((phys, core));
    }
    cores.sort();
    cores.dedup();
    let mut caches = Vec::new();
    let base = Path::new("/sys/devices/system/cpu/cpu0/cache");
    for i in 0..16 {
        let d = base.join(format!("index{i}"));
        if !d.exists() {
            break;
        }
        caches.push(CacheInfo {
            level: read(d.join("level")).parse().unwrap_or(0),
            kind: read(d.join("type")),
            size_bytes: size(&read(d.join("size"))),
            line_bytes: read(d.join("coherency_line_size")).parse().unwrap_or(0),
            ways: read(d.join("ways_of_associativity")).parse().unwrap_or(0),
            shared_cpus: read(d.join("shared_cpu_list")),
        });
    }
    let page_size = read("/proc/self/smaps")
        .lines()
        .find_map(|l| l.strip_prefix("KernelPageSize:"))
        .map(|v| size(&v.trim().trim_end_matches("kB").trim().replace(' ', "")) << 10)
        .filter(|&p| p > 0)
        .unwrap_or(4096);
    let mem_total = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|k| k << 10)
        .unwrap_or(0);
    let kernel = [
        read("/proc/sys/kernel/ostype"),
        read("/proc/sys/kernel/osrelease"),
        read("/proc/sys/kernel/version"),
    ]
    .iter()
    .filter(|s| !s.is_empty())
    .cloned()
    .collect::<Vec<_>>()
    .join(" ");
    Machine {
        cpu_model: field("model name"),
        cpu_flags: field("flags")
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        logical_cpus: logical,
        physical_cores: cores.len() as u32,
        caches,
        page_size,
        thp_enabled: read("/sys/kernel/mm/transparent_hugepage/enabled"),
        thp_defrag: read("/sys/kernel/mm/transparent_hugepage/defrag"),
        kernel,
        mem_total,
        threads_used,
    }
}

/// `[cache] L1d 48 KiB, L2 1 MiB, L3 32 MiB` for the report.
pub fn caches_line(m: &Machine) -> String {
    m.caches
        .iter()
        .map(|c| {
            let k = match c.kind.as_str() {
                "Data" => "d",
                "Instruction" => "i",
                _ => "",
            };
            format!("L{}{k} {}", c.level, crate::names::bytes(c.size_bytes))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The THP mode in brackets (`always [madvise] never` -> `madvise`).
pub fn thp_mode(s: &str) -> &str {
    s.split('[')
        .nth(1)
        .and_then(|r| r.split(']').next())
        .unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine() {
        let m = collect(2);
        assert!(m.page_size >= 4096);
        assert!(m.logical_cpus >= 1);
        assert_eq!(m.threads_used, 2);
        assert!(!m.kernel.is_empty());
        assert_eq!(thp_mode("always [madvise] never"), "madvise");
        assert_eq!(size("32K"), 32 << 10);
        assert_eq!(size("1024K"), 1 << 20);
    }
}
