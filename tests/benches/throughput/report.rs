//! The benchmark's results: medians over the runs, the tables (Markdown, printed and written to
//! docs/benchmarks.md), ratios against Node BullMQ 6.7, and the project's goals checked against them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;
use frostguard_tests::workspace_root;

use crate::chart;
use crate::contenders::Contender;
use crate::measure::{Pickup, Sample};
use crate::stats::{median, throughput_goal, waits_ideal};
use crate::{Results, Settings};

/// The workers on the same Redis calls without a plugin that the host in-process is measured against (the
/// plugin boundary): the library it is built on, and BullMQ's scripts with no library (the floor).
const BOUNDARY_REFERENCES: [Contender; 2] = [Contender::Bare, Contender::Raw];

/// The lines of docs/benchmarks.md between which the bench writes its results.
const BEGIN: &str = "<!-- bench:results:begin (written by scripts/bench.sh --write) -->";
const END: &str = "<!-- bench:results:end -->";

fn median_sample(runs: &[Sample]) -> Sample {
    let m = |f: fn(&Sample) -> f64| median(runs.iter().map(f));
    Sample {
        rate: m(|s| s.rate),
        cpu_us_per_job: m(|s| s.cpu_us_per_job),
        redis_us_per_job: m(|s| s.redis_us_per_job),
        redis_busy: m(|s| s.redis_busy),
        peak_rss_kib: m(|s| s.peak_rss_kib),
    }
}

/// The medians, ready to print.
pub struct Summary<'a> {
    settings: &'a Settings,
    pub no_op: BTreeMap<(Contender, usize), Sample>,
    pub waits: BTreeMap<Contender, Sample>,
    pub pickup: BTreeMap<Contender, Pickup>,
}

fn ratio(value: f64, reference: Option<f64>) -> String {
    match reference {
        Some(r) if r > 0.0 => format!("{:.2}×", value / r),
        _ => "–".into(),
    }
}

/// `value - reference` in ms, one decimal, signed; a difference that rounds to zero reads `0.0`, not `-0.0`.
fn difference_ms(value: f64, reference: f64) -> String {
    let d = ((value - reference) * 10.0).round() / 10.0;
    if d == 0.0 {
        "0.0".into()
    } else {
        format!("{d:+.1}")
    }
}

fn mark(pass: bool) -> &'static str {
    if pass {
        "✓"
    } else {
        "✗"
    }
}

/// A Markdown table with padded columns (readable in a terminal too).
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                let pad = " ".repeat(w - c.chars().count());
                if i == 0 {
                    format!("{c}{pad}")
                } else {
                    format!("{pad}{c}")
                }
            })
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    // Left-aligned first column, the figures right-aligned (`---:`).
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                "-".repeat(w + 2)
            } else {
                format!("{}:", "-".repeat(w + 1))
            }
        })
        .collect();
    out += &format!("|{}|\n", rule.join("|"));
    for r in rows {
        out += &line(r.clone());
    }
    out
}

impl<'a> Summary<'a> {
    pub fn new(settings: &'a Settings, results: &Results) -> Summary<'a> {
        Summary {
            settings,
            no_op: results
                .no_op
                .iter()
                .map(|(k, v)| (*k, median_sample(v)))
                .collect(),
            waits: results
                .waits
                .iter()
                .map(|(k, v)| (*k, median_sample(v)))
                .collect(),
            pickup: results
                .pickup
                .iter()
                .map(|(k, v)| {
                    let p50 = median(v.iter().map(|p| p.p50_ms));
                    let p99 = median(v.iter().map(|p| p.p99_ms));
                    (
                        *k,
                        Pickup {
                            p50_ms: p50,
                            p99_ms: p99,
                        },
                    )
                })
                .collect(),
        }
    }

    pub fn contenders(&self) -> &[Contender] {
        &self.settings.contenders
    }

    pub fn concurrencies(&self) -> &[usize] {
        &self.settings.concurrencies
    }

    /// The results as Markdown: one table per concurrency, the waiting jobs, pickup latency, and the goals.
    pub fn text(&self) -> String {
        let s = self.settings;
        let mut out = format!(
            "Medians of {} run(s); {} jobs per drain; a fresh redis-server for every drain. Ratios (×) are \
             against Node BullMQ 6.7 at the same concurrency.\n\n",
            s.runs, s.jobs
        );
        for &c in &s.concurrencies {
            out += &self.no_op_table(c);
        }
        out += &self.waits_table();
        out += &self.pickup_table();
        out += &self.goals_table();
        out
    }

    fn no_op_table(&self, c: usize) -> String {
        let node = self.no_op.get(&(Contender::Node, c));
        let mut rows = Vec::new();
        for &contender in self.contenders() {
            let Some(x) = self.no_op.get(&(contender, c)) else {
                continue;
            };
            rows.push(vec![
                contender.label().to_owned(),
                format!("{:.0}", x.rate),
                ratio(x.rate, node.map(|n| n.rate)),
                format!("{:.0}", x.cpu_us_per_job),
                ratio(x.cpu_us_per_job, node.map(|n| n.cpu_us_per_job)),
                format!("{:.0}", x.redis_us_per_job),
                ratio(x.redis_us_per_job, node.map(|n| n.redis_us_per_job)),
                format!("{:.0} %", x.redis_busy * 100.0),
                format!("{:.1}", x.peak_rss_kib / 1024.0),
                ratio(x.peak_rss_kib, node.map(|n| n.peak_rss_kib)),
            ]);
        }
        let mut out = format!("### No-op jobs, concurrency {c}\n\n");
        out += &table(
            &[
                "contender",
                "jobs/s",
                "×",
                "worker CPU µs/job",
                "×",
                "Redis CPU µs/job",
                "×",
                "Redis busy",
                "peak RSS MiB",
                "×",
            ],
            &rows,
        );
        let mut first = true;
        for reference in BOUNDARY_REFERENCES {
            if let Some((rate, cpu)) = self.boundary(c, reference) {
                let _ = writeln!(
                    out,
                    "{}Plugin boundary (frostguard in-process vs {}): throughput {:+.1} %, worker CPU per \
                     job {:+.1} %.",
                    if first { "\n" } else { "" },
                    reference.label(),
                    rate,
                    cpu
                );
                first = false;
            }
        }
        out + "\n"
    }

    /// The host in-process against `reference` (a worker on the same Redis calls without a plugin) at `c`:
    /// (throughput change %, CPU per job change %).
    fn boundary(&self, c: usize, reference: Contender) -> Option<(f64, f64)> {
        let host = self.no_op.get(&(Contender::HostInProcess, c))?;
        let base = self.no_op.get(&(reference, c))?;
        Some((
            (host.rate / base.rate - 1.0) * 100.0,
            (host.cpu_us_per_job / base.cpu_us_per_job - 1.0) * 100.0,
        ))
    }

    /// Share of the ideal rate reached with waiting jobs, for `contender`.
    fn waits_share(&self, contender: Contender) -> Option<(f64, f64)> {
        let c = self.settings.io_concurrency?;
        let x = self.waits.get(&contender)?;
        let no_op = self.no_op.get(&(contender, c)).map(|s| s.rate);
        let ideal = waits_ideal(c, self.settings.io_ms, no_op);
        Some((ideal, x.rate / ideal))
    }

    fn waits_table(&self) -> String {
        let Some(c) = self.settings.io_concurrency else {
            return String::new();
        };
        let node = self.waits.get(&Contender::Node);
        let mut rows = Vec::new();
        for &contender in self.contenders() {
            let (Some(x), Some((ideal, share))) =
                (self.waits.get(&contender), self.waits_share(contender))
            else {
                continue;
            };
            rows.push(vec![
                contender.label().to_owned(),
                format!("{:.0}", x.rate),
                format!("{ideal:.0}"),
                format!("{:.0} % {}", share * 100.0, mark(share >= 0.9)),
                format!("{:.0}", x.cpu_us_per_job),
                ratio(x.cpu_us_per_job, node.map(|n| n.cpu_us_per_job)),
                format!("{:.1}", x.peak_rss_kib / 1024.0),
                ratio(x.peak_rss_kib, node.map(|n| n.peak_rss_kib)),
            ]);
        }
        let mut out = format!(
            "### Waiting jobs ({} ms each, as an HTTP call to a provider), concurrency {c}\n\n\
             Ideal: min({c} / {} ms, the same contender's no-op rate at concurrency {c}); the goal is ≥ 90 %.\n\n",
            self.settings.io_ms, self.settings.io_ms
        );
        out += &table(
            &[
                "contender",
                "jobs/s",
                "ideal",
                "of ideal",
                "worker CPU µs/job",
                "×",
                "peak RSS MiB",
                "×",
            ],
            &rows,
        );
        out + "\n"
    }

    fn pickup_table(&self) -> String {
        if self.pickup.is_empty() {
            return String::new();
        }
        let node = self.pickup.get(&Contender::Node);
        let rows: Vec<Vec<String>> = self
            .contenders()
            .iter()
            .filter_map(|c| self.pickup.get(c).map(|p| (c, p)))
            .map(|(c, p)| {
                vec![
                    c.label().to_owned(),
                    format!("{:.1}", p.p50_ms),
                    format!("{:.1}", p.p99_ms),
                ]
                .into_iter()
                .chain([
                    node.map_or("–".into(), |n| difference_ms(p.p50_ms, n.p50_ms)),
                    node.map_or("–".into(), |n| difference_ms(p.p99_ms, n.p99_ms)),
                ])
                .collect()
            })
            .collect();
        let s = self.settings;
        let mut out = format!(
            "### Pickup latency (idle worker, concurrency 1, {} jobs added one at a time at {}/s)\n\n\
             From just before the producer's `Queue.add` to the job's `active` event at a QueueEvents reader in \
             the producer, in milliseconds.\n\n",
            s.pickup_jobs, s.pickup_rate
        );
        out += &table(
            &[
                "contender",
                "p50 ms",
                "p99 ms",
                "p50 vs Node",
                "p99 vs Node",
            ],
            &rows,
        );
        out + "\n"
    }

    /// Each goal checked for the host in both isolation modes: (goal, in-process cell, process cell).
    pub fn goals(&self) -> Vec<[String; 3]> {
        let hosts = [Contender::HostInProcess, Contender::HostProcess];
        let mut rows = Vec::new();
        let mut per_host = |goal: String, cell: &dyn Fn(Contender) -> Option<(String, bool)>| {
            let cells =
                hosts.map(|h| cell(h).map_or("–".into(), |(v, ok)| format!("{v} {}", mark(ok))));
            rows.push([goal, cells[0].clone(), cells[1].clone()]);
        };
        let node = |c: usize| self.no_op.get(&(Contender::Node, c));
        for &c in self.concurrencies() {
            if [1, 5, 50].contains(&c) {
                per_host(format!("worker CPU/job ≤ ⅓ of Node, c={c}"), &|h| {
                    let r = self.no_op.get(&(h, c))?.cpu_us_per_job / node(c)?.cpu_us_per_job;
                    Some((format!("{r:.2}×"), r <= 1.0 / 3.0))
                });
            }
        }
        for &c in self.concurrencies() {
            let goal = throughput_goal(c);
            per_host(format!("throughput ≥ {goal}× Node, c={c}"), &|h| {
                let r = self.no_op.get(&(h, c))?.rate / node(c)?.rate;
                Some((format!("{r:.2}×"), r >= goal))
            });
        }
        for reference in BOUNDARY_REFERENCES {
            for &c in self.concurrencies() {
                per_host(
                    format!(
                        "plugin boundary vs {} ≤ 5 % (throughput, CPU/job), c={c}",
                        reference.key()
                    ),
                    &|h| {
                        let (rate, cpu) = self
                            .boundary(c, reference)
                            .filter(|_| h == Contender::HostInProcess)?;
                        Some((
                            format!("{rate:+.1} %, {cpu:+.1} %"),
                            rate >= -5.0 && cpu <= 5.0,
                        ))
                    },
                );
            }
        }
        if let Some(c) = self.settings.io_concurrency {
            per_host(format!("waiting jobs ≥ 90 % of ideal, c={c}"), &|h| {
                let (_, share) = self.waits_share(h)?;
                Some((format!("{:.0} %", share * 100.0), share >= 0.9))
            });
        }
        for &c in self.concurrencies() {
            per_host(format!("peak RSS ≤ Node, c={c}"), &|h| {
                let r = self.no_op.get(&(h, c))?.peak_rss_kib / node(c)?.peak_rss_kib;
                Some((format!("{r:.2}×"), r <= 1.0))
            });
        }
        if let Some(c) = self.settings.io_concurrency {
            per_host(format!("peak RSS ≤ Node, waiting jobs, c={c}"), &|h| {
                let r = self.waits.get(&h)?.peak_rss_kib
                    / self.waits.get(&Contender::Node)?.peak_rss_kib;
                Some((format!("{r:.2}×"), r <= 1.0))
            });
        }
        // Latencies of a millisecond or two differ by a tenth between runs of the same worker: within 10 % of
        // Node's counts as no worse.
        per_host("pickup latency p50, p99 ≤ Node (+10 %)".into(), &|h| {
            let (p, n) = (self.pickup.get(&h)?, self.pickup.get(&Contender::Node)?);
            Some((
                format!("{:.1} / {:.1} ms", p.p50_ms, p.p99_ms),
                p.p50_ms <= n.p50_ms * 1.1 && p.p99_ms <= n.p99_ms * 1.1,
            ))
        });
        rows
    }

    fn goals_table(&self) -> String {
        let rows: Vec<Vec<String>> = self.goals().into_iter().map(|r| r.to_vec()).collect();
        let mut out = "### Goals\n\n".to_owned();
        out += &table(
            &["goal", "frostguard in-process", "frostguard process"],
            &rows,
        );
        out + "\n"
    }

    /// Replaces the results section of docs/benchmarks.md and writes docs/benchmarks.svg.
    pub fn write_docs(&self) -> anyhow::Result<()> {
        let docs = workspace_root().join("docs");
        let path = docs.join("benchmarks.md");
        let doc =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let (head, rest) = doc
            .split_once(BEGIN)
            .with_context(|| format!("{} lacks the line {BEGIN}", path.display()))?;
        let (_, tail) = rest
            .split_once(END)
            .with_context(|| format!("{} lacks the line {END}", path.display()))?;
        let section = format!(
            "{BEGIN}\n{}\n![jobs/s and worker CPU µs per job against concurrency](benchmarks.svg)\n\n{}{END}",
            crate::machine::describe(),
            self.text()
        );
        std::fs::write(&path, format!("{head}{section}{tail}"))?;
        std::fs::write(docs.join("benchmarks.svg"), chart::svg(self))?;
        eprintln!("wrote {} and benchmarks.svg", path.display());
        Ok(())
    }
}
