//! The top bar: image in, variant, compare, device, and the model.

use egui::Ui;

use super::Action;
use super::state::AppState;
use crate::quant::Variant;
use crate::zoo::ZOO;

pub struct ControlsPanel;

impl ControlsPanel {
    pub fn ui(&mut self, ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
        ui.horizontal_wrapped(|ui| {
            if ui.button("Open…").on_hover_text("Open an image (Ctrl+O)").clicked() {
                actions.push(Action::OpenDialog);
            }
            let mut path = state.path_input.clone();
            let field =
                ui.add(egui::TextEdit::singleline(&mut path).hint_text("or paste an image path").desired_width(220.0));
            if field.changed() {
                actions.push(Action::EditImagePath(path.clone()));
            }
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if (ui.button("Open path").clicked() || enter) && !path.trim().is_empty() {
                actions.push(Action::OpenPath(path.trim().into()));
            }
            ui.separator();
            self.variants(ui, state, actions);
        });
        ui.horizontal(|ui| {
            let label = ui.label("Model:");
            egui::ComboBox::from_id_salt("zoo")
                .selected_text("zoo")
                .width(60.0)
                .show_ui(ui, |ui| {
                    for e in ZOO {
                        if ui
                            .selectable_label(state.settings.model == e.id, format!("{} — {}", e.id, e.family))
                            .clicked()
                        {
                            actions.push(Action::LoadModel(e.id.to_string()));
                        }
                    }
                })
                .response
                .on_hover_text("Models of the zoo (hub ids)")
                .labelled_by(label.id);
            // The field takes what the buttons after it leave: paths and hub ids are long.
            let buttons = 130.0;
            let mut model = state.model_input.clone();
            let field = ui
                .add(
                    egui::TextEdit::singleline(&mut model)
                        .hint_text("hub id, model folder or exported file")
                        .desired_width((ui.available_width() - buttons).max(120.0)),
                )
                .labelled_by(label.id);
            if field.changed() {
                actions.push(Action::EditModel(model.clone()));
            }
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if ui.button("Load").on_hover_text("Load the model named in the field (Enter)").clicked() || enter {
                actions.push(Action::LoadModel(model.trim().to_string()));
            }
            if ui.button("Folder…").on_hover_text("Choose a model folder").clicked() {
                actions.push(Action::PickModelFolder);
            }
        });
    }

    fn variants(&mut self, ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
        ui.label("Variant:");
        let exported = state.exported_variant();
        let active = state.active_variants();
        for (i, v) in Variant::ALL.iter().enumerate() {
            let enabled = exported.is_none_or(|held| held == *v);
            let label = format!("{} {}", i + 1, v.name());
            if ui
                .add_enabled(enabled, egui::Button::selectable(active[0] == *v, label))
                .on_hover_text(format!("Switch to {v} (key {})", i + 1))
                .on_disabled_hover_text("this exported file holds one variant; load the fp32 model to switch")
                .clicked()
            {
                actions.push(Action::SetVariant(*v));
            }
        }
        ui.separator();
        let mut compare = active.len() > 1;
        if ui.add_enabled(exported.is_none(), egui::Checkbox::new(&mut compare, "Compare with")).changed() {
            actions.push(Action::SetCompare(compare.then(|| active[0].default_partner())));
        }
        if let Some(&c) = active.get(1) {
            for v in Variant::ALL {
                if v != active[0] && ui.add(egui::Button::selectable(c == v, v.name())).clicked() {
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
                .on_disabled_hover_text(format!("CUDA is not available: {}", cuda_unavailable.as_deref().unwrap_or("")))
                .clicked()
                && state.settings.device != d
            {
                actions.push(Action::SetDevice(d.to_string()));
            }
        }
    }
}

/// The last two path components (long hub ids and paths do not fit a status bar).
pub fn short(s: &str) -> String {
    let parts: Vec<&str> = s.trim_end_matches('/').rsplit('/').take(2).collect();
    let joined: Vec<&str> = parts.into_iter().rev().collect();
    joined.join("/")
}

/// A long job's progress, `done` of `total` (an empty bar while `total` is unknown), `width`
/// wide with `text` on it, and its Cancel button: the same row in every view that runs one.
/// Returns the bar, for a hover text.
pub fn progress_and_cancel(
    ui: &mut Ui,
    (done, total): (usize, usize),
    width: f32,
    text: String,
    actions: &mut Vec<Action>,
) -> egui::Response {
    let frac = if total > 0 { done as f32 / total as f32 } else { 0.0 };
    let bar = ui.add(egui::ProgressBar::new(frac).desired_width(width).text(text));
    if ui.button("Cancel").clicked() {
        actions.push(Action::Cancel);
    }
    bar
}
