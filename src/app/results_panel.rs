//! Top-5 labels with probability bars, and the side-by-side compare of two variants.

use egui::Ui;

use super::Action;
use super::state::{AppState, OverlayMode, VariantResult};
use crate::quant::metrics::compare_logits;

pub struct ResultsPanel;

impl ResultsPanel {
    pub fn ui(&mut self, ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
        let variants = state.active_variants();
        let waiting = state.image.is_some() && state.model.is_some();
        let primary = state.result(variants[0]);
        let Some(&second) = variants.get(1) else {
            ui.heading("Top-5");
            match primary {
                Some(r) => top5(ui, &r.label, r, state, actions),
                None => pending(ui, waiting),
            }
            return;
        };
        ui.heading(format!("{} vs {}", state.label(variants[0]), state.label(second)));
        let (Some(r1), Some(r2)) = (primary, state.result(second)) else {
            pending(ui, waiting);
            return;
        };
        // What the variant loses, first: the view no peer tool gives.
        let a = compare_logits(&r1.logits, &r2.logits);
        egui::Grid::new("agreement").num_columns(2).striped(true).show(ui, |ui| {
            ui.label("top-1 agreement");
            if a.top1_agree {
                ui.label("yes");
            } else {
                ui.colored_label(ui.visuals().warn_fg_color, "NO: the top-1 label changed");
            }
            ui.end_row();
            ui.label("top-5 overlap");
            ui.label(format!("{}/{}", a.top5_overlap, a.top5_size));
            ui.end_row();
            ui.label("KL divergence");
            ui.label(format!("{:.2e}", a.kl_div));
            ui.end_row();
            ui.label("max |Δlogit|");
            ui.label(format!("{:.4}", a.max_abs_dlogit));
            ui.end_row();
            ui.label("one-shot latency");
            ui.label(format!("{:.0} / {:.0} ms", r1.ms, r2.ms))
                .on_hover_text("a single cold-ish call; run the benchmark for real numbers");
            ui.end_row();
        });
        ui.separator();
        top5(ui, &r1.label, r1, state, actions);
        ui.add_space(6.0);
        top5(ui, &r2.label, r2, state, actions);
    }
}

fn pending(ui: &mut Ui, waiting: bool) {
    if waiting {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label("classifying…");
        });
    } else {
        ui.label("Open an image and load a model to see predictions.");
    }
}

/// One row per class: "label  [bar] p%", the label cut to fit (the full label on hover).
/// Clicking a label explains that class (attribution); the explained class is underlined.
fn top5(ui: &mut Ui, name: &str, r: &VariantResult, state: &AppState, actions: &mut Vec<Action>) {
    let o = &state.settings.overlay;
    let explained = (o.enabled && o.mode == OverlayMode::Attribution).then(|| o.class.unwrap_or(r.top5[0].index));
    ui.label(egui::RichText::new(name).strong());
    let width = ui.available_width();
    let bar_width = (width * 0.35).clamp(50.0, 150.0);
    let label_width = (width - bar_width - 70.0).max(60.0);
    egui::Grid::new(("top5", name)).num_columns(3).spacing([8.0, 4.0]).show(ui, |ui| {
        for p in &r.top5 {
            let layout = egui::Layout::left_to_right(egui::Align::Center);
            ui.allocate_ui_with_layout(egui::vec2(label_width, 18.0), layout, |ui| {
                ui.set_width(label_width);
                let text = egui::RichText::new(&p.label);
                let text = if explained == Some(p.index) { text.strong().underline() } else { text };
                let clicked = ui
                    .add(egui::Label::new(text).truncate().sense(egui::Sense::click()))
                    .on_hover_text(format!(
                        "{} (class {}): click to see what in the image speaks for it",
                        p.label, p.index
                    ))
                    .clicked();
                if clicked {
                    actions.push(Action::ExplainClass(p.index));
                }
            });
            ui.add(egui::ProgressBar::new(p.probability).desired_width(bar_width).desired_height(12.0));
            ui.label(format!("{:.1}%", p.probability * 100.0));
            ui.end_row();
        }
    });
}
