//! The frontier view: p50 latency and file size against accuracy loss (mean KL vs fp32 on the
//! benchmark's image), one point per (variant, layers kept fp32) benchmarked for the current
//! model, labelled, the Pareto front joined by a line. Points accumulate as the user keeps
//! layers fp32 and benchmarks again.

use egui::{Align2, Color32, FontId, Pos2, Rect, Ui, Vec2, vec2};
use egui_plot::{HoverPosition, Line, LineStyle, MarkerShape, Plot, PlotPoint, PlotPoints, Points, Text};

use super::Action;
use super::chart_panel::{color, nice_spacer, trim, x_axis, x_spacer};
use super::frontier::{FrontierPoint, FrontierY, eval_top1, front_for, points};
use super::state::AppState;

pub struct FrontierPanel;

const TITLE_HEIGHT: f32 = 20.0;

impl FrontierPanel {
    pub fn ui(&mut self, ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
        let model = frontier_model(state);
        let pts = model.as_deref().map(|m| points(&state.bench.latest(), m)).unwrap_or_default();
        // Top-1 on the evaluated folder, for the points the Accuracy view measured.
        let top1 = match (&state.eval.report, &model) {
            (Some(r), Some(m)) => eval_top1(&pts, r, m),
            _ => vec![None; pts.len()],
        };
        let evaluated = top1.iter().flatten().count();
        // Top-1 is offered only when it has points; otherwise the KL is shown whatever was chosen.
        let y = if evaluated > 0 { state.settings.frontier_y } else { FrontierY::MeanKl };
        let shown: Vec<(FrontierPoint, f64)> = match y {
            FrontierY::MeanKl => pts.iter().map(|p| (p.clone(), p.kl)).collect(),
            FrontierY::Top1 => pts.iter().zip(&top1).filter_map(|(p, t)| t.map(|t| (p.clone(), 100.0 * t))).collect(),
        };
        let folder = state.eval.report.as_ref().map(|r| super::controls::short(&r.source)).unwrap_or_default();
        ui.horizontal_wrapped(|ui| {
            let running = state.bench.running;
            if ui
                .add_enabled(!running && state.model.is_some(), egui::Button::new("Run benchmark"))
                .on_hover_text("Measure fp32, int8 and mobile, and their mixed forms with the layers kept fp32 now")
                .clicked()
            {
                actions.push(Action::Benchmark);
            }
            if running {
                ui.label(format!("benchmarking: {}", state.bench.phase));
                if ui.button("Cancel").clicked() {
                    actions.push(Action::Cancel);
                }
            }
            if let Some(m) = &model {
                ui.separator();
                ui.label("y:");
                if ui
                    .selectable_label(y == FrontierY::MeanKl, "mean KL")
                    .on_hover_text("Mean KL vs fp32 on the benchmark's image")
                    .clicked()
                {
                    actions.push(Action::SetFrontierY(FrontierY::MeanKl));
                }
                let why = if evaluated > 0 {
                    format!("Top-1 accuracy on {folder} (Accuracy view): {evaluated} of {} points evaluated", pts.len())
                } else {
                    "Evaluate a labelled folder in the Accuracy view first (its variants become points here once \
                     benchmarked)"
                        .to_string()
                };
                let label = if evaluated > 0 { format!("top-1 on {folder}") } else { "top-1".to_string() };
                if ui
                    .add_enabled(evaluated > 0, egui::Button::selectable(y == FrontierY::Top1, label))
                    .on_hover_text(&why)
                    .on_disabled_hover_text(&why)
                    .clicked()
                {
                    actions.push(Action::SetFrontierY(FrontierY::Top1));
                }
                ui.add(
                    egui::Label::new(format!("{}: {} point(s)", super::controls::short(m), shown.len())).truncate(),
                )
                .on_hover_text(
                    "Each benchmark adds its variants; tick layers in Sensitivity and run it again to add mixed ones.",
                );
            }
        });
        if shown.is_empty() {
            ui.centered_and_justified(|ui| {
                ui.weak(
                    "Run a benchmark: each variant measured becomes a point (p50 latency and file size against \
                     the accuracy lost vs fp32); keep layers fp32 in Sensitivity and benchmark again to add mixed ones.",
                )
            });
            return;
        }
        let h = (ui.available_height() - TITLE_HEIGHT - 4.0).max(60.0);
        let w = ui.available_width();
        let gap = 12.0;
        let latency_w = ((w - gap - 2.0 * ui.spacing().item_spacing.x) * 0.62).max(160.0);
        let size_w = (w - gap - 2.0 * ui.spacing().item_spacing.x - latency_w).max(120.0);
        ui.horizontal_top(|ui| {
            super::chart_panel::column(ui, latency_w, h, &mut |ui| {
                scatter(ui, "frontier_latency", &shown, h, Axis::Latency, y)
            });
            ui.add_space(gap);
            super::chart_panel::column(ui, size_w, h, &mut |ui| scatter(ui, "frontier_size", &shown, h, Axis::Size, y));
        });
    }
}

/// The model whose points are drawn: the loaded one if it was benchmarked, else the last one
/// benchmarked (KL is against each model's own fp32, so models are not mixed in one chart).
fn frontier_model(state: &AppState) -> Option<String> {
    let loaded = state.model.as_ref().map(|m| m.spec.clone());
    match loaded {
        Some(m) if state.bench.results.iter().any(|r| r.model == m) => Some(m),
        _ => state.bench.results.last().map(|r| r.model.clone()),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Axis {
    Latency,
    Size,
}

/// Cost (x) against mean KL or top-1 % (y, given with each point): a dot per point, named
/// beside it, the Pareto front as a line.
fn scatter(ui: &mut Ui, id: &str, shown: &[(FrontierPoint, f64)], h: f32, axis: Axis, y: FrontierY) {
    let x = |p: &FrontierPoint| if axis == Axis::Latency { p.p50_ms } else { p.file_mb };
    let (title, unit) = match (axis, y) {
        (Axis::Latency, FrontierY::MeanKl) => ("p50 latency vs accuracy loss", "ms"),
        (Axis::Size, FrontierY::MeanKl) => ("file size vs accuracy loss", "MB"),
        (Axis::Latency, FrontierY::Top1) => ("p50 latency vs top-1", "ms"),
        (Axis::Size, FrontierY::Top1) => ("file size vs top-1", "MB"),
    };
    let pts: Vec<&FrontierPoint> = shown.iter().map(|(p, _)| p).collect();
    ui.horizontal(|ui| {
        ui.label(egui::RichText::new(title).strong());
        if ui.available_width() > 110.0 {
            ui.add_space(6.0);
            front_swatch(ui, ui.visuals().text_color());
            ui.label("Pareto front");
        }
    });
    let xy: Vec<[f64; 2]> = shown.iter().map(|(p, y)| [x(p), *y]).collect();
    let front = front_for(&xy, y);
    let max_x = xy.iter().map(|p| p[0]).fold(0.0, f64::max);
    let max_y = xy.iter().map(|p| p[1]).fold(0.0, f64::max);
    let min_y = xy.iter().map(|p| p[1]).fold(f64::INFINITY, f64::min);
    // KL from 0 up; top-1 around its points (room above for names), within 0..100%.
    let (y_lo, y_hi) = match y {
        FrontierY::MeanKl => (0.0, if max_y > 0.0 { max_y * 1.2 } else { 1e-3 }),
        FrontierY::Top1 => ((min_y - 5.0).max(0.0), (max_y + 5.0).min(100.0)),
    };
    let text_color = ui.visuals().text_color();
    let label_sizes: Vec<Vec2> = pts
        .iter()
        .map(|p| ui.painter().layout_no_wrap(p.label.clone(), FontId::proportional(LABEL_SIZE), text_color).size())
        .collect();
    Plot::new(id)
        .width(ui.available_width())
        .height(h)
        .include_x(0.0)
        // Room on the right for the last point's name, and above the highest one.
        .include_x(max_x * 1.25)
        .include_y(y_lo)
        .include_y(y_hi)
        .allow_scroll(false)
        .allow_zoom(false)
        .allow_drag(false)
        .custom_x_axes(vec![x_axis()])
        .x_grid_spacer(x_spacer(3.0, 0.0))
        .y_grid_spacer(nice_spacer(4.0, 0.0))
        .x_axis_formatter(move |m, _| if m.value >= 0.0 { format!("{} {unit}", trim(m.value)) } else { String::new() })
        .y_axis_formatter(move |m, _| match y {
            _ if m.value < 0.0 => String::new(),
            FrontierY::MeanKl => kl_tick(m.value, m.step_size),
            FrontierY::Top1 => format!("{}%", trim(m.value)),
        })
        .y_axis_label(if y == FrontierY::MeanKl { "mean KL (nats)" } else { "top-1 (%)" })
        .label_formatter(|pos| match pos {
            HoverPosition::NearDataPoint { plot_name, .. } if !plot_name.is_empty() => Some(plot_name.to_string()),
            _ => None,
        })
        .show(ui, |plot| {
            if front.len() > 1 {
                let line: Vec<[f64; 2]> = front.iter().map(|&i| xy[i]).collect();
                plot.line(
                    Line::new("", PlotPoints::from(line)).color(text_color).style(LineStyle::dashed_loose()).width(1.2),
                );
            }
            for (i, p) in pts.iter().enumerate() {
                let on_front = front.contains(&i);
                let name = hover_text(p, on_front, (y == FrontierY::Top1).then_some(xy[i][1]));
                plot.points(
                    Points::new(name, PlotPoints::from(vec![xy[i]]))
                        .color(color(p.variant))
                        .shape(if p.kept_fp32.is_empty() { MarkerShape::Circle } else { MarkerShape::Diamond })
                        .filled(on_front)
                        .radius(5.0),
                );
            }
            // Names go where they cover no other name or point: close points stay readable.
            let screen: Vec<Pos2> = xy.iter().map(|p| plot.screen_from_plot(PlotPoint::new(p[0], p[1]))).collect();
            let frame = *plot.transform().frame();
            let mut taken: Vec<Rect> = screen.iter().map(|p| Rect::from_center_size(*p, Vec2::splat(10.0))).collect();
            let order = front.iter().copied().chain((0..pts.len()).filter(|i| !front.contains(i)));
            for i in order {
                let (anchor, at, rect) = place_label(screen[i], label_sizes[i], &taken, frame);
                taken.push(rect);
                let text = egui::RichText::new(&pts[i].label).size(LABEL_SIZE).color(color(pts[i].variant));
                plot.text(Text::new("", plot.plot_from_screen(at), text).anchor(anchor).allow_hover(false));
            }
        });
}

const LABEL_SIZE: f32 = 11.0;

/// Where a point's name goes: the first of the places around it (right, left, above, below)
/// that stays in the plot and overlaps nothing `taken`, else the first one. Returns the
/// anchor, the anchored position and the name's rectangle, in screen coordinates.
fn place_label(p: Pos2, size: Vec2, taken: &[Rect], frame: Rect) -> (Align2, Pos2, Rect) {
    let places = [
        (Align2::LEFT_BOTTOM, vec2(6.0, -2.0)),
        (Align2::LEFT_TOP, vec2(6.0, 2.0)),
        (Align2::RIGHT_BOTTOM, vec2(-6.0, -2.0)),
        (Align2::RIGHT_TOP, vec2(-6.0, 2.0)),
        (Align2::CENTER_BOTTOM, vec2(0.0, -7.0)),
        (Align2::CENTER_TOP, vec2(0.0, 7.0)),
    ];
    let candidate = |(anchor, offset): (Align2, Vec2)| {
        let at = p + offset;
        (anchor, at, anchor.anchor_size(at, size))
    };
    places
        .into_iter()
        .map(candidate)
        .find(|(_, _, r)| frame.contains_rect(*r) && !taken.iter().any(|t| t.intersects(*r)))
        .unwrap_or_else(|| candidate(places[0]))
}

fn hover_text(p: &FrontierPoint, on_front: bool, top1_on_folder: Option<f64>) -> String {
    let kept = if p.kept_fp32.is_empty() {
        String::new()
    } else {
        format!("\nkept fp32: {}", p.kept_fp32.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
    };
    format!(
        "{}{}\np50 {:.2} ms · {:.2} MB\nmean KL {:.2e} · top-1 agreement {:.0}% ({} image(s)){kept}",
        p.label,
        if on_front { " (on the Pareto front)" } else { "" },
        p.p50_ms,
        p.file_mb,
        p.kl,
        100.0 * p.top1_agreement,
        p.images
    ) + &top1_on_folder.map(|t| format!("\ntop-1 on the evaluated folder: {t:.1}%")).unwrap_or_default()
}

/// KL ticks in scientific form when small (`2e-4`), trimmed decimals otherwise.
fn kl_tick(v: f64, step: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if step < 0.01 {
        let s = format!("{v:.1e}");
        s.replace(".0e", "e")
    } else {
        trim(v)
    }
}

fn front_swatch(ui: &mut Ui, c: Color32) {
    let (rect, _) = ui.allocate_exact_size(Vec2::new(18.0, 10.0), egui::Sense::hover());
    let y = rect.center().y;
    let mut x = rect.left();
    while x < rect.right() {
        ui.painter()
            .line_segment([egui::pos2(x, y), egui::pos2((x + 5.0).min(rect.right()), y)], egui::Stroke::new(1.2, c));
        x += 9.0;
    }
}
