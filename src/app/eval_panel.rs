//! The accuracy view: "Evaluate folder…" over a labelled folder or `file,label` list, the
//! accuracy of each variant with its 95% Wilson interval and change against fp32, and the
//! images whose top-1 changed as thumbnails that open in the compare view.

use egui::{RichText, Ui, Vec2};

use super::Action;
use super::chart_panel::color;
use super::state::AppState;
use crate::eval::{EvalReport, Flip};
use crate::quant::Variant;

pub struct EvalPanel;

/// The box a flipped image's thumbnail is fitted into.
const THUMB_BOX: f32 = 72.0;
/// Width of one flipped image's column (thumbnail and its caption).
const FLIP_WIDTH: f32 = 104.0;

impl EvalPanel {
    pub fn ui(&mut self, ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
        self.options(ui, state, actions);
        let Some(report) = state.eval.report.as_deref() else {
            ui.centered_and_justified(|ui| {
                ui.weak(
                    "Evaluate a labelled folder (one sub-folder per class, named by ImageNet synset id, label or \
                     class index) or a file,label CSV: top-1 and top-5 of each variant with 95% intervals, and \
                     the images whose top-1 changed against fp32.",
                )
            });
            return;
        };
        ui.horizontal_top(|ui| {
            let table_width = 430.0_f32.min(ui.available_width() * 0.62);
            ui.allocate_ui_with_layout(
                Vec2::new(table_width, ui.available_height()),
                egui::Layout::top_down(egui::Align::LEFT),
                |ui| {
                    ui.set_width(table_width);
                    accuracy_table(ui, report);
                },
            );
            ui.separator();
            ui.vertical(|ui| flips(ui, state, report, actions));
        });
    }

    fn options(&mut self, ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
        ui.horizontal_wrapped(|ui| {
            let idle = !state.eval.running && state.model.is_some();
            if ui
                .add_enabled(idle, egui::Button::new("Evaluate folder…"))
                .on_hover_text("Choose a folder with one sub-folder per class (synset id, label or class index)")
                .clicked()
            {
                actions.push(Action::PickEvalFolder);
            }
            if ui
                .add_enabled(idle, egui::Button::new("List (CSV)…"))
                .on_hover_text("Choose a CSV with the columns file,label (files relative to the CSV)")
                .clicked()
            {
                actions.push(Action::PickEvalList);
            }
            let mut path = state.settings.eval_path.clone();
            let field = ui.add(
                egui::TextEdit::singleline(&mut path)
                    .hint_text("labelled folder or file,label CSV")
                    .desired_width(190.0),
            );
            if field.changed() {
                actions.push(Action::EditEvalPath(path.clone()));
            }
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if (ui.add_enabled(idle, egui::Button::new("Evaluate")).clicked() || (enter && idle))
                && !path.trim().is_empty()
            {
                actions.push(Action::Evaluate(path.trim().to_string()));
            }
            if state.eval.running {
                let (done, total) = state.eval.progress;
                let text =
                    if total > 0 { format!("{done}/{total} images") } else { "reading the folder…".to_string() };
                super::controls::progress_and_cancel(ui, (done, total), 150.0, text, actions)
                    .on_hover_text(format!("evaluating {}", state.eval.source));
            } else {
                let names: Vec<&str> = state.eval_variants().iter().map(|v| v.name()).collect();
                ui.add(egui::Label::new(RichText::new(format!("variants: {}", names.join(", "))).weak()).extend())
                    .on_hover_text("fp32, the reference, and the variants the main view shows");
            }
        });
    }
}

/// One row per variant: top-1 and top-k with their 95% Wilson intervals, the change in top-1
/// against fp32 (percentage points) and how many images flipped.
fn accuracy_table(ui: &mut Ui, report: &EvalReport) {
    let images = report.variants.first().map_or(0, |v| v.images);
    let classes: std::collections::BTreeSet<usize> = report.predictions.iter().map(|p| p.label).collect();
    ui.add(
        egui::Label::new(format!(
            "{images} images, {} classes from {}",
            classes.len(),
            super::controls::short(&report.source)
        ))
        .truncate(),
    )
    .on_hover_text(format!("{}\nmodel: {}", report.source, report.model));
    let k = report.k;
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let ci = |lo: f64, hi: f64| format!("[{:.1}, {:.1}]", 100.0 * lo, 100.0 * hi);
    egui::Grid::new("accuracy").num_columns(7).striped(true).spacing([10.0, 3.0]).show(ui, |ui| {
        for h in ["variant", "top-1", "95% CI", &format!("top-{k}"), "95% CI", "vs fp32", "flips"] {
            ui.label(RichText::new(h).strong());
        }
        ui.end_row();
        for v in &report.variants {
            ui.label(RichText::new(v.variant.name()).color(color(v.variant)).strong());
            ui.label(pct(v.top1)).on_hover_text(format!("{} of {} right", v.top1_correct, v.images));
            ui.label(ci(v.top1_low, v.top1_high)).on_hover_text("95% Wilson score interval");
            ui.label(pct(v.topk))
                .on_hover_text(format!("{} of {} with the true class in the top {k}", v.topk_correct, v.images));
            ui.label(ci(v.topk_low, v.topk_high)).on_hover_text("95% Wilson score interval");
            let reference = v.variant == Variant::Fp32 || v.top1_delta_vs_fp32.is_none();
            match v.top1_delta_vs_fp32.filter(|_| !reference) {
                Some(d) => ui.label(format!("{:+.1} pp", 100.0 * d)),
                None => ui.label("–"),
            };
            if reference { ui.label("–") } else { ui.label(v.flips.len().to_string()) }
                .on_hover_text("images whose top-1 differs from fp32's, whichever was right");
            ui.end_row();
        }
    });
}

/// The flipped images as thumbnails; a click opens one in the main view, fp32 beside the variant.
fn flips(ui: &mut Ui, state: &AppState, report: &EvalReport, actions: &mut Vec<Action>) {
    let all: Vec<(Variant, &Flip)> =
        report.variants.iter().flat_map(|v| v.flips.iter().map(move |f| (v.variant, f))).collect();
    if !report.variants.iter().any(|v| v.variant == Variant::Fp32) {
        ui.weak("No fp32 among the variants: there is nothing to count changes against.");
        return;
    }
    if all.is_empty() {
        ui.weak("No image changed its top-1 against fp32.");
        return;
    }
    ui.label(format!("Top-1 changed vs fp32 ({}): click to compare", all.len()))
        .on_hover_text("click an image to open it in the main view with fp32's and the variant's results");
    egui::ScrollArea::horizontal().id_salt("flips").show(ui, |ui| {
        ui.horizontal_top(|ui| {
            for (i, (variant, f)) in all.iter().enumerate() {
                ui.push_id(i, |ui| flip(ui, state, *variant, f, actions));
            }
        });
    });
}

fn flip(ui: &mut Ui, state: &AppState, variant: Variant, f: &Flip, actions: &mut Vec<Action>) {
    ui.allocate_ui_with_layout(
        Vec2::new(FLIP_WIDTH, THUMB_BOX + 40.0),
        egui::Layout::top_down(egui::Align::Center),
        |ui| {
            ui.set_width(FLIP_WIDTH);
            let hover = format!(
                "{}\ntrue: {}\nfp32: {}  ->  {variant}: {}\nright: {}\nclick to open it with both variants' results",
                f.file, f.label, f.fp32, f.variant, f.right
            );
            let button = match state.eval.thumbnails.get(&f.file) {
                Some(tex) => {
                    let size = tex.size_vec2();
                    let s = (THUMB_BOX / size.x.max(size.y)).min(1.0);
                    egui::Button::image(egui::Image::from_texture((tex.id(), size * s)))
                }
                None => egui::Button::new("(no preview)").min_size(Vec2::splat(THUMB_BOX)),
            };
            let name =
                std::path::Path::new(&f.file).file_name().map_or(f.file.clone(), |n| n.to_string_lossy().into_owned());
            let response = ui.add(button);
            // Announced (and found by tests) by what a click does.
            response.widget_info(|| {
                egui::WidgetInfo::labeled(egui::Role::Button, true, format!("open {name} ({variant})"))
            });
            if response.on_hover_text(hover).clicked() {
                actions.push(Action::OpenFlip { file: f.file.clone().into(), variant });
            }
            let right = match f.right.as_str() {
                "fp32" => "fp32 was right",
                "neither" => "neither right",
                _ => "variant right",
            };
            ui.add(
                egui::Label::new(RichText::new(format!("{variant}: {}", f.variant)).small().color(color(variant)))
                    .truncate(),
            );
            ui.add(egui::Label::new(RichText::new(right).small().weak()).truncate());
        },
    );
}
