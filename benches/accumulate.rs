//! Folding deltas into a reply, beside a bare `String::push_str` loop over the same deltas.
use chatstream::{Accumulator, Delta, FinishReason, ToolCallDelta};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn text_deltas(n: usize) -> Vec<Delta> {
    let words = [
        "Stream", "ing", " lets", " the", " user", " see", " the", " reply", " as", " it", " is",
        " written", ".",
    ];
    (0..n)
        .map(|i| Delta::text(words[i % words.len()]))
        .collect()
}

fn tool_mix(n: usize) -> Vec<Delta> {
    (0..n)
        .map(|i| match i % 4 {
            0 => Delta::text(" some text"),
            1 => Delta::reasoning(" thinking"),
            _ => Delta::ToolCall(ToolCallDelta {
                index: ((i / 4) % 3) as u32,
                id: (i < 12).then(|| format!("call_{i}")),
                name: (i < 12).then(|| "get_weather".to_string()),
                arguments: "{\"loc\": \"Pa".to_string(),
            }),
        })
        .chain([Delta::usage(10, 20), Delta::finish(FinishReason::ToolCalls)])
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("accumulate");
    for (name, deltas) in [
        ("text_10k", text_deltas(10_000)),
        ("tool_mix_10k", tool_mix(10_000)),
    ] {
        g.throughput(Throughput::Elements(deltas.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("accumulator", name),
            &deltas,
            |b, deltas| {
                b.iter(|| {
                    let mut acc = Accumulator::new();
                    for d in deltas {
                        acc.push(d);
                    }
                    black_box(acc)
                })
            },
        );
        // The baseline: what a hand-written loop does for the text alone.
        g.bench_with_input(
            BenchmarkId::new("push_str_baseline", name),
            &deltas,
            |b, deltas| {
                b.iter(|| {
                    let mut text = String::new();
                    for d in deltas {
                        match d {
                            Delta::Text { text: t } | Delta::Reasoning { text: t } => {
                                text.push_str(t)
                            }
                            Delta::ToolCall(c) => text.push_str(&c.arguments),
                            _ => {}
                        }
                    }
                    black_box(text)
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
