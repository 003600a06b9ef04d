//! The benchmark: its options, live latency over the timed runs (samples, running median and
//! p90), and the latest p50 latency and file size of every (model, variant) measured.

use egui::{Color32, Stroke, Ui, Vec2};
use egui_plot::{
    AxisHints, Bar, BarChart, GridInput, GridMark, HoverPosition, Line, LineStyle, MarkerShape, Plot, PlotPoints,
    Points,
};

use super::Action;
use super::state::AppState;
use crate::bench::BenchResult;
use crate::quant::Variant;

pub struct ChartPanel;

pub fn color(v: Variant) -> Color32 {
    match v {
        Variant::Fp32 => Color32::from_rgb(90, 160, 255),
        Variant::Int8 => Color32::from_rgb(255, 150, 60),
        Variant::Mobile => Color32::from_rgb(110, 210, 120),
    }
}

/// Width of the live plot's legend row (variants, median, p90) without its title.
const LIVE_LEGEND_WIDTH: f32 = 330.0;

/// Space for the title and legend row above each plot.
const TITLE_HEIGHT: f32 = 20.0;

impl ChartPanel {
    pub fn ui(&mut self, ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
        self.options(ui, state, actions);
        if state.bench.live.is_empty() && state.bench.results.is_empty() {
            // Empty axes would show made-up ranges; say what will appear here instead.
            ui.centered_and_justified(|ui| {
                ui.weak(
                    "Run a benchmark: latency of every timed run, p50 latency and file size per variant appear here.",
                )
            });
            return;
        }
        let latest = state.bench.latest();
        let models = model_keys(&latest);
        let h = (ui.available_height() - TITLE_HEIGHT - 4.0).max(60.0);
        let w = ui.available_width();
        // Between the three columns: a gap, plus the item spacing around each added gap.
        let gap = 12.0;
        let spaces = 2.0 * gap + 4.0 * ui.spacing().item_spacing.x;
        // The live plot's legend row needs LIVE_LEGEND_WIDTH; the bars keep 100 px each.
        let live_w = ((w - spaces) * 0.44).max(LIVE_LEGEND_WIDTH.min(w - spaces - 200.0)).max(120.0);
        let bar_w = ((w - spaces - live_w) / 2.0).max(100.0);
        ui.horizontal_top(|ui| {
            column(ui, live_w, h, &mut |ui| live_plot(ui, state, h));
            ui.add_space(gap);
            column(ui, bar_w, h, &mut |ui| {
                bar_plot(ui, "p50_latency", "p50 latency", &latest, &models, h, Measure::Latency)
            });
            ui.add_space(gap);
            column(ui, bar_w, h, &mut |ui| bar_plot(ui, "file_size", "file size", &latest, &models, h, Measure::Size));
        });
    }

    fn options(&mut self, ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
        // In a small window a shorter path field keeps the row on one line (more height for the charts).
        let narrow = ui.available_width() < 900.0;
        let path_width = if narrow { 90.0 } else { 180.0 };
        ui.horizontal_wrapped(|ui| {
            let running = state.bench.running;
            if ui.add_enabled(!running && state.model.is_some(), egui::Button::new("Run benchmark")).clicked() {
                actions.push(Action::Benchmark);
            }
            if running {
                // No spinner: its animation would repaint continuously and steal the CPU the
                // measurement needs. The worker wakes the UI a few times a second instead.
                let runs: usize = state.bench.live.values().map(|s| s.len()).sum();
                ui.label(format!("benchmarking: {} ({runs} timed runs)", state.bench.phase));
                if ui.button("Cancel").clicked() {
                    actions.push(Action::Cancel);
                }
            }
            let s = &state.settings;
            let (mut warmup, mut runs, mut seconds) = (s.bench_warmup, s.bench_runs, s.bench_seconds);
            let mut changed = false;
            let label = ui.label("warm-up");
            changed |= ui.add(egui::DragValue::new(&mut warmup).range(0..=1000)).labelled_by(label.id).changed();
            let label = ui.label("runs ≥");
            changed |= ui.add(egui::DragValue::new(&mut runs).range(1..=100_000)).labelled_by(label.id).changed();
            let label = ui.label("seconds ≥");
            changed |= ui
                .add(egui::DragValue::new(&mut seconds).range(0.0..=600.0).speed(0.1))
                .labelled_by(label.id)
                .changed();
            if changed {
                actions.push(Action::SetBenchOptions { warmup, runs, seconds });
            }
            ui.separator();
            let label = ui.label("CSV:");
            let mut path = s.export_path.clone();
            if ui.add(egui::TextEdit::singleline(&mut path).desired_width(path_width)).labelled_by(label.id).changed() {
                actions.push(Action::SetExportPath(path));
            }
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
            let n = state.bench.results.len();
            let gathered = if narrow { format!("{n} results") } else { format!("{n} result(s) gathered") };
            ui.add(egui::Label::new(gathered).extend()).on_hover_text(
                "Benchmarks in the window share the CPU with drawing it; `vit-workbench bench` measures without a window.",
            );
        });
    }
}

/// Samples as dots, the running median as a solid line and the running p90 dashed, one colour
/// per variant; the legend sits above the plot, not over the data.
fn live_plot(ui: &mut Ui, state: &AppState, h: f32) {
    let roomy = ui.available_width() >= 420.0;
    ui.horizontal(|ui| {
        if roomy {
            ui.label(egui::RichText::new("latency per run").strong());
        }
        for (v, label) in state.bench.live.keys() {
            swatch(ui, color(*v), false);
            ui.label(label);
        }
        if !state.bench.live.is_empty() {
            ui.add_space(6.0);
            swatch(ui, ui.visuals().text_color(), false);
            ui.label("median");
            swatch(ui, ui.visuals().text_color(), true);
            ui.label("p90");
        }
    });
    let max_run = state.bench.live.values().map(|s| s.len()).max().unwrap_or(0).max(1) as f64;
    Plot::new("latency_over_runs")
        .width(ui.available_width())
        .height(h)
        .include_x(0.0)
        .include_x(max_run)
        .include_y(0.0)
        .allow_scroll(false)
        .allow_zoom(false)
        .allow_drag(false)
        .custom_x_axes(vec![x_axis()])
        .x_grid_spacer(x_spacer(4.0, 1.0))
        .y_grid_spacer(nice_spacer(4.0, 0.0))
        .x_axis_formatter(|m, _| if m.value >= 0.0 { format!("{:.0}", m.value) } else { String::new() })
        .y_axis_formatter(|m, _| if m.value >= 0.0 { format!("{} ms", trim(m.value)) } else { String::new() })
        .x_axis_label("timed run")
        .label_formatter(|pos| match pos {
            HoverPosition::NearDataPoint { plot_name, position, .. } if !plot_name.is_empty() => {
                Some(format!("{plot_name}\nrun {:.0}: {:.2} ms", position.x, position.y))
            }
            _ => None,
        })
        .show(ui, |plot| {
            for ((v, label), series) in &state.bench.live {
                // A mixed form is drawn in its variant's colour, its median line thinner.
                let mixed = label != v.name();
                let pts: Vec<[f64; 2]> =
                    series.samples.iter().enumerate().map(|(i, ms)| [i as f64 + 1.0, *ms]).collect();
                let marker = if mixed { MarkerShape::Diamond } else { MarkerShape::Circle };
                plot.points(
                    Points::new(format!("{label} sample"), PlotPoints::from(pts))
                        .color(color(*v))
                        .shape(marker)
                        .radius(1.5),
                );
                plot.line(
                    Line::new(format!("{label} running median"), PlotPoints::from(series.median.clone()))
                        .color(color(*v))
                        .width(if mixed { 1.2 } else { 2.0 }),
                );
                plot.line(
                    Line::new(format!("{label} running p90"), PlotPoints::from(series.p90.clone()))
                        .color(color(*v))
                        .style(LineStyle::dashed_dense())
                        .width(1.5),
                );
            }
        });
}

#[derive(Clone, Copy, PartialEq)]
enum Measure {
    Latency,
    Size,
}

/// Horizontal bars, one per (model, variant), named on the y axis; the value axis has its unit.
fn bar_plot(
    ui: &mut Ui,
    id: &str,
    title: &str,
    latest: &[&BenchResult],
    models: &[(String, String)],
    h: f32,
    measure: Measure,
) {
    ui.horizontal(|ui| {
        ui.label(egui::RichText::new(title).strong());
        if models.len() > 1 {
            // Several models: each gets a letter; the letters are explained here.
            let keys: Vec<String> = models.iter().map(|(k, m)| format!("{k}: {}", super::controls::short(m))).collect();
            ui.add(egui::Label::new(keys.join("  ")).truncate());
        }
    });
    let names: Vec<String> = latest
        .iter()
        .map(|r| match models.iter().find(|(_, m)| *m == r.model) {
            Some((k, _)) if models.len() > 1 => format!("{k} {}", r.label()),
            _ => r.label(),
        })
        .collect();
    let fp32_size = |model: &str| {
        latest.iter().find(|r| r.model == model && r.variant == Variant::Fp32).map(|r| r.file_bytes as f64)
    };
    // The first result at the top: bars are placed at -i.
    let bars: Vec<Bar> = latest
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (value, text) = match measure {
                Measure::Latency => (
                    r.stats.p50,
                    format!("{}: p50 {:.2} ms, p90 {:.2} ms ({} runs)", names[i], r.stats.p50, r.stats.p90, r.stats.n),
                ),
                Measure::Size => {
                    let mb = r.file_bytes as f64 / 1e6;
                    let rel =
                        fp32_size(&r.model).map(|f| format!(" ({:.1}% of fp32)", 100.0 * r.file_bytes as f64 / f));
                    (mb, format!("{}: {mb:.2} MB{}", names[i], rel.unwrap_or_default()))
                }
            };
            Bar::new(-(i as f64), value).name(text).fill(color(r.variant)).width(0.7)
        })
        .collect();
    let unit = if measure == Measure::Latency { "ms" } else { "MB" };
    // Room to the right of the longest bar, so it never runs into the edge.
    let longest = bars.iter().map(|b| b.value).fold(0.0, f64::max);
    let names_axis = names.clone();
    let font = egui::FontId::proportional(11.0);
    named_bars_plot(id, ui.available_width(), h, names_axis, longest * 1.12, unit, 3.0, Some(font))
        .label_formatter(|_| None)
        .show(ui, |plot| {
            if !bars.is_empty() {
                let chart =
                    BarChart::new(title, bars).horizontal().element_formatter(Box::new(|bar, _| bar.name.clone()));
                plot.bar_chart(chart);
            }
        });
}

/// A plot of one horizontal bar per name (bar i at y = -i, every one named on the y axis,
/// however short the plot), x from 0 to `x_max` with about `x_ticks` ticks in `unit`, fixed in
/// place: the bar charts of the Benchmark and Stage times views.
#[allow(clippy::too_many_arguments)]
pub(super) fn named_bars_plot(
    id: &str,
    width: f32,
    h: f32,
    names: Vec<String>,
    x_max: f64,
    unit: &'static str,
    x_ticks: f64,
    name_font: Option<egui::FontId>,
) -> Plot<'static> {
    let n = names.len();
    let mut name_axis = AxisHints::new_y().label_spacing(8.0..=10.0);
    if let Some(font) = name_font {
        name_axis = name_axis.tick_label_font(font);
    }
    Plot::new(id)
        .width(width)
        .height(h)
        .include_x(0.0)
        .include_x(x_max)
        .include_y(0.5)
        .include_y(-(n.max(1) as f64) + 0.5)
        .allow_scroll(false)
        .allow_zoom(false)
        .allow_drag(false)
        .show_grid([true, false])
        .custom_x_axes(vec![x_axis()])
        .x_grid_spacer(x_spacer(x_ticks, 0.0))
        .y_grid_spacer(move |input: GridInput| {
            (0..n)
                .map(|i| GridMark { value: -(i as f64), step_size: 1.0 })
                .filter(|m| m.value >= input.bounds.0 && m.value <= input.bounds.1)
                .collect()
        })
        .x_axis_formatter(move |m, _| if m.value >= 0.0 { format!("{} {unit}", trim(m.value)) } else { String::new() })
        .custom_y_axes(vec![name_axis.formatter(move |m, _| {
            let i = (-m.value).round();
            if (m.value + i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })])
}

/// A column `w` wide and `h` tall (plus a title's height), laid out top-down, for the views
/// that set plots side by side.
pub(super) fn column(ui: &mut Ui, w: f32, h: f32, add: &mut dyn FnMut(&mut Ui)) {
    let layout = egui::Layout::top_down(egui::Align::LEFT);
    ui.allocate_ui_with_layout(Vec2::new(w, h + TITLE_HEIGHT), layout, |ui| {
        ui.set_width(w);
        add(ui)
    });
}

/// Each model measured gets a letter (A, B, …), in the order first measured.
fn model_keys(latest: &[&BenchResult]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for r in latest {
        if !out.iter().any(|(_, m)| *m == r.model) {
            let key = char::from(b'A' + (out.len() % 26) as u8).to_string();
            out.push((key, r.model.clone()));
        }
    }
    out
}

/// Grid lines at 1-2-5 steps, about `ticks` of them across the visible range (never finer than
/// `min_step`): labelled ticks people can read, whatever the range. For a y axis.
pub(super) fn nice_spacer(ticks: f64, min_step: f64) -> impl Fn(GridInput) -> Vec<GridMark> {
    spacer(ticks, min_step, 30.0)
}

/// [`nice_spacer`] for an x axis made by [`x_axis`]: in a narrow plot the steps widen until the
/// tick labels are far enough apart to be drawn at full strength.
pub(super) fn x_spacer(ticks: f64, min_step: f64) -> impl Fn(GridInput) -> Vec<GridMark> {
    spacer(ticks, min_step, X_LABEL_SPACING.1)
}

/// egui_plot hides x tick labels closer than the first number of points and fades them up to the
/// second. Its default, 60..80, leaves a narrow plot (a bar chart in an 800 px window) with one
/// label or none; ours (`200 MB`, `20 ms`) are narrower than 45 points, and egui_plot still skips
/// a label wider than its spacing.
const X_LABEL_SPACING: (f32, f32) = (45.0, 55.0);

/// The main x axis of our plots (set its formatter and label on the plot as usual).
pub(super) fn x_axis() -> AxisHints<'static> {
    AxisHints::new_x().label_spacing(X_LABEL_SPACING.0..=X_LABEL_SPACING.1)
}

/// Steps of about `ticks` across the range, but at least `min_points` apart on screen.
fn spacer(ticks: f64, min_step: f64, min_points: f32) -> impl Fn(GridInput) -> Vec<GridMark> {
    move |input: GridInput| {
        let (lo, hi) = input.bounds;
        // egui_plot passes the value of its smallest grid spacing, 8 points (the default, not changed here).
        let per_point = input.base_step_size / 8.0;
        let step = nice_step(((hi - lo) / ticks).max(per_point * f64::from(min_points))).max(min_step);
        if !step.is_finite() || step <= 0.0 {
            return Vec::new();
        }
        let first = (lo / step).ceil() as i64;
        let last = (hi / step).floor() as i64;
        (first..=last).take(100).map(|k| GridMark { value: k as f64 * step, step_size: step }).collect()
    }
}

/// The 1, 2 or 5 times a power of ten nearest above `raw`.
pub fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    let f = raw / p;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * p
}

/// A tick value without trailing zeros (`20`, `2.5`, `0.05`).
pub(super) fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A short line sample for the legend: solid, or dashed as the p90 lines are.
fn swatch(ui: &mut Ui, c: Color32, dashed: bool) {
    let (rect, _) = ui.allocate_exact_size(Vec2::new(18.0, 10.0), egui::Sense::hover());
    let y = rect.center().y;
    if dashed {
        let mut x = rect.left();
        while x < rect.right() {
            ui.painter()
                .line_segment([egui::pos2(x, y), egui::pos2((x + 4.0).min(rect.right()), y)], Stroke::new(1.5, c));
            x += 7.0;
        }
    } else {
        ui.painter().line_segment([rect.left_center(), rect.right_center()], Stroke::new(2.5, c));
    }
}
