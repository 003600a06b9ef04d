//! Live latency over the runs of a benchmark (samples, running median and p90) and bars of
//! latency and size per variant.

use egui::Ui;
use egui_plot::{Bar, BarChart, Legend, Line, Plot, PlotPoints, Points};

use super::Action;
use super::state::AppState;
use crate::bench::stats;
use crate::quant::Variant;

pub struct ChartPanel;

const PLOT_HEIGHT: f32 = 190.0;

fn color(v: Variant) -> egui::Color32 {
    match v {
        Variant::Fp32 => egui::Color32::from_rgb(90, 160, 255),
        Variant::Int8 => egui::Color32::from_rgb(255, 150, 60),
        Variant::Mobile => egui::Color32::from_rgb(110, 210, 120),
    }
}

impl ChartPanel {
    pub fn ui(&mut self, ui: &mut Ui, state: &mut AppState, actions: &mut Vec<Action>) {
        ui.horizontal_wrapped(|ui| {
            let running = state.bench.running;
            if ui.add_enabled(!running && state.model.is_some(), egui::Button::new("Run benchmark")).clicked() {
                actions.push(Action::Benchmark);
            }
            if running {
                // No spinner: its animation would repaint continuously and steal the CPU the
                // measurement needs. The worker wakes the UI a few times a second instead.
                let runs: usize = state.bench.live.values().map(Vec::len).sum();
                ui.label(format!("benchmarking: {} ({runs} timed runs)", state.bench.phase));
                if ui.button("Cancel").clicked() {
                    actions.push(Action::Cancel);
                }
            }
            ui.add(egui::DragValue::new(&mut state.settings.bench_warmup).range(0..=1000).prefix("warm-up "));
            ui.add(egui::DragValue::new(&mut state.settings.bench_runs).range(1..=100_000).prefix("runs >= "));
            ui.add(
                egui::DragValue::new(&mut state.settings.bench_seconds)
                    .range(0.0..=600.0)
                    .speed(0.1)
                    .prefix("seconds >= "),
            );
            ui.separator();
            let label = ui.label("CSV:");
            ui.add(egui::TextEdit::singleline(&mut state.settings.export_path).desired_width(200.0))
                .labelled_by(label.id);
            if ui.button("…").on_hover_text("Choose where to save the CSV").clicked() {
                actions.push(Action::ChooseExportPath);
            }
            if ui
                .add_enabled(!state.bench.results.is_empty(), egui::Button::new("Export CSV"))
                .on_hover_text("Write every benchmark result of this session (Ctrl+E)")
                .clicked()
            {
                actions.push(Action::ExportCsv);
            }
            ui.label(format!("{} result(s) gathered", state.bench.results.len()))
                .on_hover_text("Benchmarks in the window share the CPU with drawing it; `vit-workbench bench` measures without a window.");
        });
        // A fixed height: the panel sizes itself to its content.
        let h = PLOT_HEIGHT;
        ui.columns(2, |cols| {
            Plot::new("latency_over_runs")
                .legend(Legend::default().position(egui_plot::Corner::LeftTop))
                .height(h - 8.0)
                .x_axis_label("run")
                .y_axis_label("ms")
                .show(&mut cols[0], |plot| {
                    for (v, samples) in &state.bench.live {
                        let pts: Vec<[f64; 2]> =
                            samples.iter().enumerate().map(|(i, ms)| [i as f64 + 1.0, *ms]).collect();
                        plot.points(Points::new("", PlotPoints::from(pts)).color(color(*v)).radius(1.5));
                        // Running median and p90 as the runs accumulate.
                        let mut med = Vec::with_capacity(samples.len());
                        let mut p90 = Vec::with_capacity(samples.len());
                        for i in 1..=samples.len() {
                            let s = stats(&samples[..i]);
                            med.push([i as f64, s.p50]);
                            p90.push([i as f64, s.p90]);
                        }
                        plot.line(Line::new(format!("{v} median"), PlotPoints::from(med)).color(color(*v)).width(2.0));
                        plot.line(
                            Line::new(format!("{v} p90"), PlotPoints::from(p90))
                                .color(color(*v).gamma_multiply(0.5))
                                .width(1.0),
                        );
                    }
                });
            // Latest result per variant: p50 latency and file size relative to fp32.
            let mut latest: Vec<&crate::bench::BenchResult> = Vec::new();
            for r in state.bench.results.iter().rev() {
                if !latest.iter().any(|o| o.variant == r.variant) {
                    latest.push(r);
                }
            }
            latest.sort_by_key(|r| r.variant);
            let fp32_size = latest.iter().find(|r| r.variant == Variant::Fp32).map(|r| r.file_bytes as f64);
            let lat: Vec<Bar> = latest
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    Bar::new(i as f64 * 3.0, r.stats.p50)
                        .name(format!("{} p50 ms", r.variant))
                        .fill(color(r.variant))
                        .width(0.9)
                })
                .collect();
            let size: Vec<Bar> = latest
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let rel = fp32_size.map_or(0.0, |f| 100.0 * r.file_bytes as f64 / f);
                    Bar::new(i as f64 * 3.0 + 1.0, rel)
                        .name(format!("{} size % of fp32", r.variant))
                        .fill(color(r.variant).gamma_multiply(0.5))
                        .width(0.9)
                })
                .collect();
            Plot::new("latency_size_bars")
                .legend(Legend::default().position(egui_plot::Corner::LeftTop))
                .height(h - 8.0)
                .y_axis_label("p50 ms | size %")
                .show(&mut cols[1], |plot| {
                    plot.bar_chart(BarChart::new("p50 latency (ms)", lat));
                    plot.bar_chart(BarChart::new("file size (% of fp32)", size));
                });
        });
    }
}
