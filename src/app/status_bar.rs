//! The status bar (device, threads, kernel path, what the worker is doing) and the notices.

use egui::{Color32, Ui};

use super::Action;
use super::state::{AppState, Level};
use crate::device::Int8Kernel;

pub struct StatusBar;

impl StatusBar {
    pub fn ui(&mut self, ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
        ui.horizontal(|ui| {
            // The loaded model's device, not the one asked for: they differ while loading or after a failure.
            let device = state.model.as_ref().map_or_else(|| state.settings.device.clone(), |m| m.device.clone());
            ui.label(format!("device: {}", device.to_uppercase()));
            ui.separator();
            ui.label(format!("threads: {}", rayon::current_num_threads()));
            ui.separator();
            match state.model.as_ref().map(|m| m.int8_kernel) {
                Some(k @ Int8Kernel::CudaQ8_0) => ui.label(k.describe()),
                _ => ui.label(crate::bench::simd_summary()).on_hover_text(Int8Kernel::CpuPerChannelRowwise.describe()),
            };
            ui.separator();
            match &state.model {
                Some(m) => ui.label(format!(
                    "{} — {:.1}M params, {} layers, {} ({})",
                    super::controls::short(&m.spec),
                    m.params as f64 / 1e6,
                    m.depth,
                    m.recipe,
                    m.stored_variant
                )),
                None => ui.label("no model loaded"),
            };
            if let Some(busy) = &state.busy {
                ui.separator();
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
                // A running benchmark has its own Cancel beside the chart.
                if !state.bench.running && ui.small_button("Cancel").clicked() {
                    actions.push(Action::Cancel);
                }
            }
        });
    }
}

pub struct Notices;

impl Notices {
    pub fn ui(&mut self, ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
        for n in &state.notices {
            let (fill, text) = match n.level {
                Level::Error => (Color32::from_rgb(110, 30, 30), Color32::WHITE),
                Level::Info => (Color32::from_rgb(30, 60, 100), Color32::WHITE),
            };
            egui::Frame::new().fill(fill).inner_margin(6.0).corner_radius(4.0).show(ui, |ui| {
                ui.horizontal(|ui| {
                    ui.colored_label(text, &n.text);
                    if ui.small_button("Dismiss").on_hover_text("Dismiss").clicked() {
                        actions.push(Action::Dismiss(n.id));
                    }
                });
            });
        }
    }
}
