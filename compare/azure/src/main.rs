//! tower-identity against azure_core 1.x / azure_identity 1.x: both stacks against one loopback
//! server in one process, every scenario run for both, alternating, three repeats; prints a
//! markdown table of the figures and their ratios. See README.md.
//!
//! ```text
//! cargo run --release --manifest-path compare/azure/Cargo.toml
//! ```

mod alloc;
mod scenarios;
mod server;
mod stacks;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use scenarios::{Cell, Scenario};
use stacks::Side;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

const REPEATS: usize = 3;

fn main() {
    // The server has its own runtime (and threads, whose allocations are not counted); the
    // stacks share the client runtime. Two workers each: the machine this was written on has
    // two cores.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()
        .expect("server runtime");
    let server = server_runtime.block_on(server::start());
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .on_thread_start(alloc::client_thread)
        .enable_all()
        .build()
        .expect("client runtime");
    alloc::client_thread();

    // (scenario, metric) → per side, one cell per repeat, in the order first seen.
    let mut order: Vec<(&'static str, &'static str)> = Vec::new();
    let mut results: BTreeMap<(&str, &str), [Vec<Cell>; 2]> = BTreeMap::new();
    let mut bare_allocs = Vec::new();
    for scenario in Scenario::ALL {
        for repeat in 0..REPEATS {
            // Alternate who goes first, so neither always runs on a warmer machine.
            let sides = if repeat % 2 == 0 {
                [Side::Ours, Side::Azure]
            } else {
                [Side::Azure, Side::Ours]
            };
            eprintln!("{} · run {}", scenario.name(), repeat + 1);
            let cells = client_runtime.block_on(scenario.run(sides, &server));
            for (slot, cells) in cells.into_iter().enumerate() {
                for (metric, cell) in cells {
                    let key = (scenario.name(), metric);
                    if !order.contains(&key) {
                        order.push(key);
                    }
                    results.entry(key).or_default()[slot].push(cell);
                }
            }
            if scenario == Scenario::Allocations {
                bare_allocs.push(client_runtime.block_on(scenarios::bare_allocations(&server)));
            }
        }
    }

    println!("{}", table(&order, &results, &bare_allocs));
    drop(client_runtime);
    drop(server_runtime);
}

fn table(
    order: &[(&str, &str)],
    results: &BTreeMap<(&str, &str), [Vec<Cell>; 2]>,
    bare_allocs: &[f64],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", machine());
    let _ = writeln!(
        out,
        "| Scenario | Metric | tower-identity (runs 1 / 2 / 3) | azure_core (runs 1 / 2 / 3) | ours ÷ azure_core |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for key in order {
        let [ours, azure] = &results[key];
        let join = |cells: &[Cell]| {
            cells
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let ratios = ours
            .iter()
            .zip(azure)
            .map(|(a, b)| Cell::ratio(a, b))
            .collect::<Vec<_>>()
            .join(" / ");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            key.0,
            key.1,
            join(ours),
            join(azure),
            ratios
        );
    }
    let bare = bare_allocs
        .iter()
        .map(|n| format!("{n:.1}"))
        .collect::<Vec<_>>()
        .join(" / ");
    let _ = writeln!(
        out,
        "\nFloor: the bare hyper-util client (no authentication) makes {bare} allocations per request."
    );
    out
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "Machine: {cpus} CPUs ({model}); {date}; azure_core {} / azure_identity {}.",
        locked_version("azure_core"),
        locked_version("azure_identity")
    )
}

/// The version of `name` this crate was built with, from its Cargo.lock.
fn locked_version(name: &str) -> &'static str {
    let lock = include_str!("../Cargo.lock");
    let entry = format!("name = \"{name}\"\nversion = \"");
    lock.split_once(entry.as_str())
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or("?", |(version, _)| version)
}
