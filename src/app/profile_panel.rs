//! "Where the time goes": one stacked horizontal bar per variant, a segment per stage of the
//! forward (summed over the blocks, medians over the rounds, from `crate::profile`), and beside
//! it the check of the stage sum against the same forward without the profiler.

use egui::{Color32, RichText, Ui, Vec2};
use egui_plot::{Bar, BarChart};

use super::Action;
use super::state::AppState;
use crate::profile::{TOLERANCE, VariantProfile};

pub struct ProfilePanel;

/// Every stage a forward can have, in the order it runs, with its colour. A fused int8 stage
/// (`norm1+qkv`) has its own colour, next to the fp32 stages it replaces.
const STAGES: [(&str, Color32); 12] = [
    ("patch embed", Color32::from_rgb(120, 120, 130)),
    ("norm1", Color32::from_rgb(160, 200, 240)),
    ("norm1+qkv", Color32::from_rgb(40, 110, 200)),
    ("qkv", Color32::from_rgb(70, 150, 255)),
    ("attention", Color32::from_rgb(240, 90, 90)),
    ("proj", Color32::from_rgb(255, 190, 70)),
    ("norm2", Color32::from_rgb(190, 240, 170)),
    ("norm2+fc1", Color32::from_rgb(40, 150, 80)),
    ("fc1", Color32::from_rgb(90, 200, 110)),
    ("fc2", Color32::from_rgb(180, 120, 230)),
    ("final norm", Color32::from_rgb(200, 200, 200)),
    ("head", Color32::from_rgb(240, 140, 200)),
];

fn stage_color(stage: &str) -> Color32 {
    STAGES.iter().find(|(s, _)| *s == stage).map_or(Color32::GRAY, |(_, c)| *c)
}

/// The stages present in any variant, in forward order (unknown names last, as they come).
fn stages_present(report: &[VariantProfile]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = STAGES
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| report.iter().any(|v| v.stages.iter().any(|st| st.stage == *s)))
        .collect();
    for v in report {
        for st in &v.stages {
            if !out.contains(&st.stage) {
                out.push(st.stage);
            }
        }
    }
    out
}

impl ProfilePanel {
    pub fn ui(&mut self, ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
        self.options(ui, state, actions);
        let Some(report) = state.profile.report.as_deref().filter(|r| !r.is_empty()) else {
            ui.centered_and_justified(|ui| {
                ui.weak(
                    "Profile: every stage of a real forward timed per variant (patch embed, norms, qkv, attention, \
                     proj, fc1, fc2, head; summed over the blocks, medians over the rounds), checked against the \
                     forward without the profiler.",
                )
            });
            return;
        };
        let stages = stages_present(report);
        // Legend: a swatch and the name of each stage present.
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().item_spacing.x = 4.0;
            for s in &stages {
                let (rect, _) = ui.allocate_exact_size(Vec2::new(12.0, 12.0), egui::Sense::hover());
                ui.painter().rect_filled(rect, 2.0, stage_color(s));
                ui.label(RichText::new(*s).small());
                ui.add_space(6.0);
            }
        });
        let h = ui.available_height().max(50.0);
        ui.horizontal_top(|ui| {
            let check_w = 270.0_f32.min(ui.available_width() * 0.36);
            let plot_w = (ui.available_width() - check_w - 12.0).max(120.0);
            ui.allocate_ui_with_layout(Vec2::new(plot_w, h), egui::Layout::top_down(egui::Align::LEFT), |ui| {
                ui.set_width(plot_w);
                stacked_bars(ui, report, &stages, h);
            });
            ui.allocate_ui_with_layout(Vec2::new(check_w, h), egui::Layout::top_down(egui::Align::LEFT), |ui| {
                ui.set_width(check_w);
                checks(ui, report)
            });
        });
    }

    fn options(&mut self, ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
        ui.horizontal_wrapped(|ui| {
            let running = state.profile.running;
            let idle = !running && state.model.is_some();
            if ui
                .add_enabled(idle, egui::Button::new("Profile"))
                .on_hover_text("Time every stage of a forward of each variant (synthetic input, batch 1)")
                .clicked()
            {
                actions.push(Action::Profile);
            }
            let label = ui.label("rounds");
            let mut runs = state.settings.profile_runs;
            if ui
                .add(egui::DragValue::new(&mut runs).range(1..=super::state::MAX_PROFILE_RUNS))
                .labelled_by(label.id)
                .on_hover_text("each round: one forward per variant with the profiler and one without")
                .changed()
            {
                actions.push(Action::SetProfileRuns(runs));
            }
            if running {
                let (done, total) = state.profile.progress;
                super::controls::progress_and_cancel(
                    ui,
                    (done, total),
                    150.0,
                    format!("{done}/{total} rounds"),
                    actions,
                );
            } else if let Some(r) = state.profile.report.as_deref() {
                let rounds = r.first().map_or(0, |v| v.runs.len());
                ui.add(
                    egui::Label::new(
                        RichText::new(format!(
                            "{}: CPU, {} threads, batch 1, synthetic input; medians over {rounds} rounds",
                            super::controls::short(&state.profile.model),
                            state.profile.threads
                        ))
                        .weak(),
                    )
                    .truncate(),
                )
                .on_hover_text(&state.profile.model);
            }
        });
    }
}

/// One bar per variant (the first at the top), a segment per stage; hovering a segment shows
/// the stage's time and its share of the stage sum.
fn stacked_bars(ui: &mut Ui, report: &[VariantProfile], stages: &[&'static str], h: f32) {
    let n = report.len();
    let mut offsets = vec![0.0f64; n];
    let mut charts = Vec::new();
    for &stage in stages {
        let bars: Vec<Bar> = report
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let st = v.stages.iter().find(|s| s.stage == stage)?;
                let text = format!(
                    "{} · {stage} (x{}): {:.2} ms, {:.1}% of the stage sum{}",
                    v.variant,
                    st.count,
                    st.p50_ms,
                    100.0 * st.share,
                    st.gmacs_per_s().map(|g| format!(", {g:.1} GMAC/s")).unwrap_or_default()
                );
                let bar = Bar::new(-(i as f64), st.p50_ms)
                    .base_offset(offsets[i])
                    .name(text)
                    .fill(stage_color(stage))
                    .width(0.6);
                offsets[i] += st.p50_ms;
                Some(bar)
            })
            .collect();
        charts.push(BarChart::new(stage, bars).horizontal().element_formatter(Box::new(|bar, _| bar.name.clone())));
    }
    let longest = offsets.iter().copied().fold(0.0, f64::max);
    let names: Vec<String> = report.iter().map(|v| v.variant.to_string()).collect();
    super::chart_panel::named_bars_plot(
        "where_the_time_goes",
        ui.available_width(),
        h,
        names,
        longest * 1.05,
        "ms",
        4.0,
        None,
    )
    .label_formatter(|_| None)
    .show(ui, |plot| {
        for c in charts {
            plot.bar_chart(c);
        }
    });
}

/// Per variant: the stage sum against the forward without the profiler, and whether they agree
/// within the tolerance (if not, the stages are not to be trusted; said, not hidden).
fn checks(ui: &mut Ui, report: &[VariantProfile]) {
    // One line each, cut rather than wrapped: the panel is short at 800x600.
    let line = |ui: &mut Ui, text: RichText| ui.add(egui::Label::new(text).truncate());
    line(ui, RichText::new(format!("stage sum / forward p50 (within {:.0}%?)", 100.0 * TOLERANCE)).strong())
        .on_hover_text("the same forward without the profiler, timed in the same rounds; they must agree within 10%");
    for v in report {
        let ratio = v.stage_sum_p50_ms / v.forward_p50_ms;
        let ok = v.within_tolerance();
        let verdict = format!("{}within {:.0}%", if ok { "" } else { "NOT " }, 100.0 * TOLERANCE);
        let text = format!(
            "{}: {:.2} / {:.2} ms = {ratio:.3} {}",
            v.variant,
            v.stage_sum_p50_ms,
            v.forward_p50_ms,
            if ok { "ok" } else { "NOT within 10%" }
        );
        let text = if ok { RichText::new(text) } else { RichText::new(text).color(ui.visuals().warn_fg_color) };
        line(ui, text).on_hover_text(format!(
            "stage sum {:.2} ms, forward without profiling p50 {:.2} ms, profiled forward p50 {:.2} ms: {}",
            v.stage_sum_p50_ms,
            v.forward_p50_ms,
            v.profiled.p50,
            if ok {
                verdict.clone()
            } else {
                format!("{verdict}: the machine was busy or the stages are too short to time; profile again with more rounds")
            }
        ));
    }
    if report.iter().any(|v| v.fused) {
        line(ui, RichText::new("int8/mobile: each norm runs inside the int8 layer after it").small().weak())
            .on_hover_text(
                "int8 and mobile normalise the rows as they quantize them: norm1+qkv and norm2+fc1 are one stage each",
            );
    }
}
