//! The status bar (what the worker is doing, device, threads, kernel path, model) and the
//! notices, drawn as toasts over the window.

use egui::{Align2, Color32, Frame, Order, RichText, Sense, Stroke, Ui, Vec2};

use super::Action;
use super::state::{AppState, BottomView, Level};
use crate::device::Int8Kernel;

pub struct StatusBar;

impl StatusBar {
    pub fn ui(&mut self, ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
        ui.horizontal(|ui| {
            // What is happening comes first: it must never be the part cut off.
            if let Some(busy) = &state.busy {
                if !state.bench.running {
                    ui.spinner();
                }
                ui.label(busy);
                if let Some((file, done, total)) = &state.download {
                    let frac = if *total > 0 { *done as f32 / *total as f32 } else { 0.0 };
                    ui.add(
                        egui::ProgressBar::new(frac)
                            .desired_width(120.0)
                            .text(format!("{file} {:.1} MB", *done as f64 / 1e6)),
                    );
                }
                // A running benchmark has its own Cancel beside the chart; an evaluation, a
                // profile or a ranking has one in its view while that view is shown.
                let view = state.settings.view;
                let own_cancel = (state.eval.running && view == BottomView::Accuracy)
                    || (state.profile.running && view == BottomView::Profile)
                    || (state.sensitivity.running && view == BottomView::Sensitivity);
                if !state.bench.running && !own_cancel && ui.small_button("Cancel").clicked() {
                    actions.push(Action::Cancel);
                }
                ui.separator();
            }
            // The loaded model's device, not the one asked for: they differ while loading or after a failure.
            let device = state.model.as_ref().map_or_else(|| state.settings.device.clone(), |m| m.device.clone());
            ui.label(format!("device: {}", device.to_uppercase()));
            ui.separator();
            match state.model.as_ref().map(|m| m.int8_kernel) {
                Some(k @ Int8Kernel::CudaQ8_0) => ui.label(k.describe()),
                _ => ui.label(&state.environment.summary).on_hover_text(format!(
                    "{}\n{}",
                    state.environment.detail,
                    Int8Kernel::CpuPerChannelRowwise.describe()
                )),
            };
            ui.separator();
            let model = match &state.model {
                Some(m) => ui.add(
                    egui::Label::new(format!(
                        "{} ({}) — {:.1}M params, {} layers, {} classes",
                        super::controls::short(&m.spec),
                        m.stored_variant,
                        m.params as f64 / 1e6,
                        m.depth,
                        m.classes,
                    ))
                    .truncate(),
                ),
                None => ui.label("no model loaded"),
            };
            if let Some(m) = &state.model {
                model.on_hover_text(format!("{}\n{}\npreprocessing: {}", m.spec, m.architecture, m.recipe));
            }
        });
    }
}

pub struct Notices;

/// Widest a notice gets; narrower windows get notices as wide as they are, less a margin.
const NOTICE_WIDTH: f32 = 440.0;

impl Notices {
    /// Draws the notices, newest first, in the top-right corner below `top` (the top bar's
    /// bottom), over whatever is there.
    pub fn ui(&mut self, ctx: &egui::Context, top: f32, state: &AppState, actions: &mut Vec<Action>) {
        if state.notices.is_empty() {
            return;
        }
        let width = (ctx.content_rect().width() - 24.0).clamp(120.0, NOTICE_WIDTH);
        egui::Area::new(egui::Id::unique("notices"))
            .order(Order::Foreground)
            .anchor(Align2::RIGHT_TOP, [-12.0, top + 8.0])
            .show(ctx, |ui| {
                ui.set_width(width);
                for n in state.notices.iter().rev() {
                    let fill = match n.level {
                        Level::Error => Color32::from_rgb(120, 28, 28),
                        Level::Info => Color32::from_rgb(28, 58, 100),
                    };
                    Frame::new()
                        .fill(fill)
                        .inner_margin(8.0)
                        .corner_radius(6.0)
                        .shadow(ui.visuals().popup_shadow)
                        .show(ui, |ui| {
                            ui.set_width(width - 16.0);
                            ui.horizontal_top(|ui| {
                                let text_width = ui.available_width() - 24.0;
                                ui.allocate_ui(Vec2::new(text_width, 0.0), |ui| {
                                    ui.set_width(text_width);
                                    let prefix = if n.level == Level::Error { "Error: " } else { "" };
                                    ui.add(
                                        egui::Label::new(
                                            RichText::new(format!("{prefix}{}", n.text)).color(Color32::WHITE),
                                        )
                                        .wrap(),
                                    );
                                    if let Some(source) = &n.open_anyway
                                        && ui
                                            .button("Open anyway")
                                            .on_hover_text("Show the part that decoded; the image is marked truncated")
                                            .clicked()
                                    {
                                        actions.push(Action::OpenTruncated(source.clone()));
                                    }
                                });
                                if close_button(ui).on_hover_text("Dismiss (Esc dismisses the newest)").clicked() {
                                    actions.push(Action::Dismiss(n.id));
                                }
                            });
                        });
                    ui.add_space(6.0);
                }
            });
    }
}

/// A small x, drawn (no font needed), announced as "Dismiss".
fn close_button(ui: &mut Ui) -> egui::Response {
    let (rect, response) = ui.allocate_exact_size(Vec2::splat(18.0), Sense::click());
    response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, "Dismiss"));
    let color = if response.hovered() { Color32::WHITE } else { Color32::from_gray(210) };
    let r = rect.shrink(4.0);
    let p = ui.painter();
    p.line_segment([r.left_top(), r.right_bottom()], Stroke::new(2.0, color));
    p.line_segment([r.right_top(), r.left_bottom()], Stroke::new(2.0, color));
    response
}
