//! The top bar: image in, model, variant, compare, device.

use egui::Ui;

use super::Action;
use super::state::AppState;
use crate::quant::Variant;
use crate::zoo::ZOO;

pub struct ControlsPanel;

impl ControlsPanel {
    pub fn ui(&mut self, ui: &mut Ui, state: &mut AppState, actions: &mut Vec<Action>) {
        ui.horizontal_wrapped(|ui| {
            if ui.button("Open…").on_hover_text("Open an image (Ctrl+O)").clicked() {
                actions.push(Action::OpenDialog);
            }
            let path = ui.add(
                egui::TextEdit::singleline(&mut state.path_input)
                    .hint_text("or paste an image path")
                    .desired_width(220.0),
            );
            let enter = path.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if (ui.button("Open path").clicked() || enter) && !state.path_input.trim().is_empty() {
                actions.push(Action::OpenPath(state.path_input.trim().into()));
            }
            ui.separator();
            egui::ComboBox::from_label("Model").selected_text(short(&state.settings.model)).width(230.0).show_ui(
                ui,
                |ui| {
                    for e in ZOO {
                        if ui
                            .selectable_label(state.settings.model == e.id, format!("{} — {}", e.id, e.family))
                            .clicked()
                        {
                            state.model_input = e.id.to_string();
                            actions.push(Action::LoadModel(e.id.to_string()));
                        }
                    }
                },
            );
            ui.add(
                egui::TextEdit::singleline(&mut state.model_input)
                    .hint_text("hub id, folder or exported file")
                    .desired_width(200.0),
            );
            if ui.button("Load").on_hover_text("Load the model named in the field").clicked() {
                actions.push(Action::LoadModel(state.model_input.trim().to_string()));
            }
            if ui.button("Folder…").clicked() {
                actions.push(Action::PickModelFolder);
            }
        });
        ui.horizontal_wrapped(|ui| {
            ui.label("Variant:");
            let exported_only = state.model.as_ref().is_some_and(|m| m.stored_variant != Variant::Fp32);
            for (i, v) in Variant::ALL.iter().enumerate() {
                let enabled = !exported_only || state.model.as_ref().is_some_and(|m| m.stored_variant == *v);
                let label = format!("{} {}", i + 1, v.name());
                if ui
                    .add_enabled(enabled, egui::Button::selectable(state.settings.variant == *v, label))
                    .on_hover_text(format!("Switch to {v} (key {})", i + 1))
                    .clicked()
                {
                    actions.push(Action::SetVariant(*v));
                }
            }
            ui.separator();
            let mut compare = state.settings.compare.is_some();
            if ui.add_enabled(!exported_only, egui::Checkbox::new(&mut compare, "Compare with")).changed() {
                actions.push(Action::SetCompare(if compare {
                    Some(default_compare(state.settings.variant))
                } else {
                    None
                }));
            }
            if let Some(c) = state.settings.compare {
                for v in Variant::ALL {
                    if v != state.settings.variant && ui.add(egui::Button::selectable(c == v, v.name())).clicked() {
                        actions.push(Action::SetCompare(Some(v)));
                    }
                }
            }
            ui.separator();
            ui.label("Device:");
            let cuda_unavailable = state.cuda.unavailable_reason();
            for d in ["cpu", "cuda"] {
                let hover = match (&state.cuda, d) {
                    (_, "cpu") => "Run on the CPU (our int8 kernels)".to_string(),
                    (crate::device::CudaStatus::Ready { name }, _) => {
                        format!("Run on GPU 0: {name} ({})", crate::device::Int8Kernel::CudaQ8_0.describe())
                    }
                    _ => String::new(),
                };
                if ui
                    .add_enabled(
                        d == "cpu" || cuda_unavailable.is_none(),
                        egui::Button::selectable(state.settings.device == d, d.to_uppercase()),
                    )
                    .on_hover_text(hover)
                    .on_disabled_hover_text(format!(
                        "CUDA is not available: {}",
                        cuda_unavailable.as_deref().unwrap_or("")
                    ))
                    .clicked()
                    && state.settings.device != d
                {
                    actions.push(Action::SetDevice(d.to_string()));
                }
            }
        });
    }
}

fn default_compare(v: Variant) -> Variant {
    if v == Variant::Fp32 { Variant::Int8 } else { Variant::Fp32 }
}

/// The last two path components (long hub ids and paths do not fit a combo box).
pub fn short(s: &str) -> String {
    let parts: Vec<&str> = s.trim_end_matches('/').rsplit('/').take(2).collect();
    let joined: Vec<&str> = parts.into_iter().rev().collect();
    joined.join("/")
}
