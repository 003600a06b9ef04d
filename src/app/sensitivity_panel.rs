//! The sensitivity view: every linear layer ranked by what quantizing it alone costs against
//! fp32 (KL, top-1 flips, max |Δlogit|) and what keeping it alone fp32 leaves, a bar per
//! layer, and a tick per layer that keeps it fp32 in the window's int8 and mobile variants.

use std::collections::BTreeSet;

use egui::{Color32, RichText, Sense, Ui, Vec2};

use super::Action;
use super::state::{AppState, planned_label};
use crate::model::LayerName;
use crate::quant::sensitivity::{Cost, LayerSensitivity};

pub struct SensitivityPanel;

/// The schemes offered in the window: ours, PyTorch's, and each of torch's four choices alone,
/// so the loss can be traced to one of them (`--scheme` takes any combination).
pub const SCHEME_CHOICES: [&str; 6] =
    ["default", "torch", "weights=per-tensor", "acts=per-tensor", "bits=7", "acts=asym"];

/// How the window's int8 and mobile are quantized: a choice rebuilds them (and drops the
/// ranking, which was made under the old scheme).
fn scheme_choice(ui: &mut Ui, state: &AppState, enabled: bool, actions: &mut Vec<Action>) {
    let current = state.quant.scheme;
    ui.add_enabled_ui(enabled, |ui| {
        egui::ComboBox::from_label("scheme")
            .selected_text(current.to_string())
            .show_ui(ui, |ui| {
                for name in SCHEME_CHOICES {
                    let Ok(scheme) = name.parse::<crate::quant::Scheme>() else { continue };
                    if ui.selectable_label(scheme == current, name).clicked() && scheme != current {
                        actions.push(Action::SetScheme(scheme));
                    }
                }
            })
            .response
            .on_hover_text(
                "How int8 and mobile quantize: default = per-channel weights, per-row 8-bit symmetric activations; \
                 torch = PyTorch quantize_dynamic on x86 (per-tensor weights, per-tensor 7-bit asymmetric activations, \
                 fp32 patch embedding)",
            )
            .on_disabled_hover_text("needs the fp32 model, and no ranking running");
    });
}

/// Layers "keep top" keeps fp32.
pub const KEEP_TOP: usize = 3;

/// Column widths: rank, keep fp32 + layer, KL alone (bar and value), KL all-but, flips, max |Δlogit|.
const COLUMNS: [f32; 6] = [28.0, 136.0, 190.0, 84.0, 40.0, 84.0];
const HEADERS: [&str; 6] = ["#", "keep fp32: layer", "KL alone", "KL all-but", "flips", "max |Δlogit|"];
const HEADER_HOVER: [&str; 6] = [
    "Rank: 1 is the layer whose quantization alone costs the most",
    "Ticked: the layer stays fp32 in the int8 and mobile variants (they are rebuilt in the background). Names as --keep-fp32 takes them",
    "Mean KL(p_fp32 || p) with only this layer quantized, every other one fp32 (nats)",
    "Mean KL with every layer quantized but this one: lower than 'all quantized' means keeping it helps",
    "Images whose top-1 changes with only this layer quantized",
    "Largest |logit - fp32 logit| with only this layer quantized",
];
const ROW_HEIGHT: f32 = 18.0;

impl SensitivityPanel {
    pub fn ui(&mut self, ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
        self.options(ui, state, actions);
        let Some(report) = &state.sensitivity.report else {
            ui.centered_and_justified(|ui| {
                ui.weak(
                    "Rank layers: each linear layer is quantized alone and kept fp32 alone, and scored against fp32 \
                     on the image. Tick layers to keep them fp32; int8 and mobile are rebuilt with them.",
                )
            });
            return;
        };
        let s = &report.ranking;
        let all = &s.all_quantized;
        ui.horizontal_wrapped(|ui| {
            ui.label(RichText::new(format!("{} on {}", s.variant, report.source)).strong());
            ui.label(format!(
                "all quantized: KL {}, flips {}/{}, max |Δlogit| {:.3}",
                sci(all.kl),
                all.flips,
                s.images,
                all.max_abs_dlogit
            ));
        });
        let editable = state.exported_variant().is_none();
        header(ui);
        let max_kl = s.layers.iter().map(|l| l.alone.kl).fold(0.0, f64::max);
        egui::ScrollArea::vertical().auto_shrink([false, false]).show_rows(
            ui,
            ROW_HEIGHT,
            s.layers.len(),
            |ui, rows| {
                for l in &s.layers[rows] {
                    row(ui, l, max_kl, all, &state.quant.keep_fp32, editable, actions);
                }
            },
        );
    }

    fn options(&mut self, ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
        ui.horizontal_wrapped(|ui| {
            let running = state.sensitivity.running;
            let fp32_model = state.model.is_some() && state.exported_variant().is_none();
            let idle = !running && !state.bench.running && fp32_model;
            let variant = state.sensitivity_variant();
            if ui
                .add_enabled(idle && state.image.is_some(), egui::Button::new("Rank layers"))
                .on_hover_text(format!("Rank the layers of {variant} on the current image"))
                .on_disabled_hover_text("needs an image and the fp32 model (an exported file has no fp32 reference)")
                .clicked()
            {
                actions.push(Action::RankLayers { folder: None });
            }
            let mut folder = state.settings.sensitivity_folder.clone();
            let field =
                ui.add(egui::TextEdit::singleline(&mut folder).hint_text("or a folder of images").desired_width(150.0));
            if field.changed() {
                actions.push(Action::EditSensitivityFolder(folder.clone()));
            }
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            let folder_given = !folder.trim().is_empty();
            let clicked = ui
                .add_enabled(idle && folder_given, egui::Button::new("Rank on folder"))
                .on_hover_text(format!(
                    "Rank on the first {} images of the folder, as one batch",
                    super::worker::MAX_RANK_IMAGES
                ))
                .clicked();
            if clicked || (enter && idle && folder_given) {
                actions.push(Action::RankLayers { folder: Some(folder.trim().into()) });
            }
            if running {
                let (done, total) = state.sensitivity.progress;
                super::controls::progress_and_cancel(
                    ui,
                    (done, total),
                    120.0,
                    format!("{done}/{total} models"),
                    actions,
                );
            }
            ui.separator();
            scheme_choice(ui, state, fp32_model && !state.sensitivity.running, actions);
            ui.separator();
            let kept = &state.quant.keep_fp32;
            let can_keep = fp32_model && state.sensitivity.report.is_some();
            if ui
                .add_enabled(can_keep, egui::Button::new(format!("keep top {KEEP_TOP}")))
                .on_hover_text(format!("Keep the {KEEP_TOP} most sensitive layers fp32"))
                .clicked()
                && let Some(r) = &state.sensitivity.report
            {
                actions.push(Action::SetKeepFp32(r.ranking.top(KEEP_TOP)));
            }
            if ui
                .add_enabled(fp32_model && !kept.is_empty(), egui::Button::new("none"))
                .on_hover_text("Quantize every layer again")
                .clicked()
            {
                actions.push(Action::SetKeepFp32(BTreeSet::new()));
            }
            let variants: Vec<String> = crate::quant::Variant::ALL
                .iter()
                .filter(|v| **v != crate::quant::Variant::Fp32)
                .map(|v| planned_label(*v, &state.quant))
                .collect();
            ui.add(
                egui::Label::new(format!("kept fp32: {} layer(s), making {}", kept.len(), variants.join(", ")))
                    .truncate(),
            )
            .on_hover_text(if kept.is_empty() {
                "every layer quantized".to_string()
            } else {
                kept.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            });
        });
    }
}

fn header(ui: &mut Ui) {
    ui.horizontal(|ui| {
        for ((w, h), hover) in COLUMNS.iter().zip(HEADERS).zip(HEADER_HOVER) {
            cell(ui, *w, |ui| {
                ui.label(RichText::new(h).strong()).on_hover_text(hover);
            });
        }
    });
}

/// One layer: tick, rank, name, a bar of its KL alone (scaled to the largest), the rest as numbers.
fn row(
    ui: &mut Ui,
    l: &LayerSensitivity,
    max_kl: f64,
    all: &Cost,
    kept: &BTreeSet<LayerName>,
    editable: bool,
    actions: &mut Vec<Action>,
) {
    ui.horizontal(|ui| {
        ui.set_height(ROW_HEIGHT);
        cell(ui, COLUMNS[0], |ui| {
            ui.label(l.rank.to_string());
        });
        cell(ui, COLUMNS[1], |ui| {
            let mut keep = kept.contains(&l.layer);
            let hover = format!("keep {} fp32 in int8 and mobile", l.layer);
            let name = RichText::new(l.layer.to_string()).monospace();
            if ui.add_enabled(editable, egui::Checkbox::new(&mut keep, name)).on_hover_text(hover).changed() {
                let mut next = kept.clone();
                if keep {
                    next.insert(l.layer);
                } else {
                    next.remove(&l.layer);
                }
                actions.push(Action::SetKeepFp32(next));
            }
        });
        cell(ui, COLUMNS[2], |ui| {
            let bar_w = COLUMNS[2] - 66.0;
            let (rect, resp) = ui.allocate_exact_size(Vec2::new(bar_w, ROW_HEIGHT - 6.0), Sense::hover());
            let frac = if max_kl > 0.0 { (l.alone.kl / max_kl).clamp(0.0, 1.0) as f32 } else { 0.0 };
            let painter = ui.painter();
            painter.rect_filled(rect, 2.0, ui.visuals().extreme_bg_color);
            let mut bar = rect;
            bar.set_width((rect.width() * frac).max(if l.alone.kl > 0.0 { 1.0 } else { 0.0 }));
            painter.rect_filled(bar, 2.0, BAR);
            resp.on_hover_text(format!(
                "{}: KL {} with only this layer quantized ({:.1}% of the largest)",
                l.layer,
                sci(l.alone.kl),
                100.0 * frac
            ));
            ui.label(sci(l.alone.kl));
        });
        cell(ui, COLUMNS[3], |ui| {
            // Keeping it fp32 helps when what is left is below every-layer-quantized.
            let text = RichText::new(sci(l.all_but.kl));
            let text = if l.all_but.kl < all.kl { text } else { text.weak() };
            ui.label(text);
        });
        cell(ui, COLUMNS[4], |ui| {
            let text = RichText::new(l.alone.flips.to_string());
            ui.label(if l.alone.flips > 0 { text.color(ui.visuals().warn_fg_color) } else { text });
        });
        cell(ui, COLUMNS[5], |ui| {
            ui.label(format!("{:.4}", l.alone.max_abs_dlogit));
        });
    });
}

const BAR: Color32 = Color32::from_rgb(255, 150, 60);

/// A fixed-width cell, so the rows line up under the header.
fn cell(ui: &mut Ui, w: f32, add: impl FnOnce(&mut Ui)) {
    let layout = egui::Layout::left_to_right(egui::Align::Center);
    ui.allocate_ui_with_layout(Vec2::new(w, ROW_HEIGHT), layout, |ui| {
        ui.set_width(w);
        add(ui)
    });
}

/// `1.23e-4`: KL values span orders of magnitude.
fn sci(v: f64) -> String {
    if v == 0.0 { "0".into() } else { format!("{v:.2e}") }
}
