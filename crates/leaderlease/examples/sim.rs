//! The simulator's runner (`npm run sim -- ...`; feature `sim`): runs seeds, prints a summary, and for a
//! failing seed the command that replays it with the last events of its trace.
//!
//! ```text
//! npm run sim -- --seeds N [--seed S] [--minutes M] [--json] [--mutant NAME] [--list-mutants]
//!                [--stop] [--trace]
//! ```
//! `--seed S` alone replays that one seed; with `--seeds N` the run covers seeds S..S+N. `--minutes M`
//! is the simulated time per seed (default 1). `--stop` ends at the first violation (for mutants).
//! `--trace` prints a single seed's whole trace on stderr.

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use leaderlease::sim::{MUTANTS, Options, mutant_by_name, run_seed};

fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("{msg}");
    eprintln!(
        "usage: npm run sim -- --seeds N [--seed S] [--minutes M] [--json] [--mutant NAME] \
         [--list-mutants] [--stop] [--trace]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut seeds, mut first, mut minutes) = (None::<u64>, None::<u64>, 1.0f64);
    let (mut json, mut stop, mut trace, mut mutant_name) = (false, false, false, None::<String>);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--seeds" => match value("--seeds")
                .and_then(|v| v.parse().map_err(|e| format!("--seeds: {e}")))
            {
                Ok(v) => seeds = Some(v),
                Err(e) => return usage(&e),
            },
            "--seed" => {
                match value("--seed").and_then(|v| v.parse().map_err(|e| format!("--seed: {e}"))) {
                    Ok(v) => first = Some(v),
                    Err(e) => return usage(&e),
                }
            }
            "--minutes" => match value("--minutes")
                .and_then(|v| v.parse().map_err(|e| format!("--minutes: {e}")))
            {
                Ok(v) if v > 0.0 => minutes = v,
                Ok(_) => return usage("--minutes must be positive"),
                Err(e) => return usage(&e),
            },
            "--mutant" => match value("--mutant") {
                Ok(v) => mutant_name = Some(v),
                Err(e) => return usage(&e),
            },
            "--json" => json = true,
            "--stop" => stop = true,
            "--trace" => trace = true,
            "--list-mutants" => {
                for (name, _) in MUTANTS {
                    println!("{name}");
                }
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let mutant = match &mutant_name {
        Some(name) => match mutant_by_name(name) {
            Some(m) => Some(m),
            None => return usage(&format!("unknown mutant {name:?} (see --list-mutants)")),
        },
        None => None,
    };
    let first_seed = first.unwrap_or(1);
    let count = seeds.unwrap_or(if first.is_some() { 1 } else { 100 });
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let (wall0, cpu0) = (Instant::now(), cpu_seconds());
    let (mut lease_seconds, mut sim_seconds, mut changes, mut violations) = (0.0, 0.0, 0u64, 0u64);
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut failing, mut ran) = (Vec::new(), 0u64);
    for seed in first_seed..first_seed + count {
        let r = run_seed(&Options {
            seed,
            duration,
            mutant,
            full_trace: trace && count == 1,
        });
        ran += 1;
        lease_seconds += r.lease_seconds;
        sim_seconds += r.simulated_seconds;
        changes += r.leadership_changes;
        for (k, v) in &r.faults {
            *faults.entry(k).or_default() += v;
        }
        if trace && count == 1 {
            for line in &r.trace {
                eprintln!("{line}");
            }
        }
        if r.violation_count > 0 {
            violations += r.violation_count;
            failing.push(seed);
            if failing.len() <= 3 {
                let mutant_arg = mutant_name
                    .as_ref()
                    .map(|m| format!(" --mutant {m}"))
                    .unwrap_or_default();
                eprintln!(
                    "seed {seed}: {} violation(s) ({})",
                    r.violation_count, r.setup
                );
                for v in &r.violations {
                    eprintln!("  {v}");
                }
                eprintln!(
                    "  replay: npm run sim -- --seed {seed} --minutes {minutes}{mutant_arg} --trace"
                );
                eprintln!("  last events:");
                for line in r.trace.iter().rev().take(40).rev() {
                    eprintln!("    {line}");
                }
            }
            if stop {
                break;
            }
        }
    }
    let (wall, cpu) = (wall0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let faults_json: Vec<String> = faults.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    let failing_json: Vec<String> = failing.iter().take(20).map(u64::to_string).collect();
    let out = format!(
        "{{\"seeds\":{ran},\"firstSeed\":{first_seed},\"simulatedSecondsPerSeed\":{:.1},\
         \"simulatedLeaseSeconds\":{lease_seconds:.1},\"leadershipChanges\":{changes},\
         \"faults\":{{{}}},\"violations\":{violations},\"failingSeedCount\":{},\"failingSeeds\":[{}],\"mutant\":{},\
         \"wallSeconds\":{wall:.3},\"cpuSeconds\":{cpu:.3},\"simulatedSecondsPerWallSecond\":{:.0},\
         \"simulatedLeaseSecondsPerCpuMinute\":{:.0}}}",
        duration.as_secs_f64(),
        faults_json.join(","),
        failing.len(),
        failing_json.join(","),
        mutant_name
            .as_ref()
            .map_or("null".to_owned(), |m| format!("\"{m}\"")),
        sim_seconds / wall.max(1e-9),
        lease_seconds / (cpu.max(1e-9) / 60.0),
    );
    if json {
        println!("{out}");
    } else {
        println!(
            "{ran} seeds, {lease_seconds:.0} simulated lease-seconds, {changes} leadership changes, \
             {violations} violations{}",
            if failing.is_empty() {
                String::new()
            } else {
                format!(" (seeds {})", failing_json.join(", "))
            }
        );
        println!("faults: {}", faults_json.join(", "));
        println!(
            "{wall:.2} s wall, {cpu:.2} s CPU: {:.0} simulated s per wall s, {:.0} lease-s per CPU minute",
            sim_seconds / wall.max(1e-9),
            lease_seconds / (cpu.max(1e-9) / 60.0)
        );
        println!("{out}");
    }
    if violations > 0 && mutant.is_none() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
