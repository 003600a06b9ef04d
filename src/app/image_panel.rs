//! The image with its attention overlay, the drop zone, and the overlay controls.

use egui::{Color32, Rect, Sense, Stroke, Ui, Vec2, pos2};

use super::Action;
use super::state::{AppState, OverlayMode};
use crate::explain::{Colormap, HeadFusion};

pub struct ImagePanel;

impl ImagePanel {
    pub fn ui(&mut self, ui: &mut Ui, state: &mut AppState, hovering: bool, actions: &mut Vec<Action>) {
        self.overlay_controls(ui, state, actions);
        ui.separator();
        let avail = ui.available_size();
        let (rect, _) = ui.allocate_exact_size(avail, Sense::hover());
        let painter = ui.painter_at(rect);
        let variants = state.settings.active_variants();
        match &state.image {
            None => {
                painter.text(
                    rect.center(),
                    egui::Align2::CENTER_CENTER,
                    "Drop an image here, or open one (Ctrl+O)",
                    egui::FontId::proportional(18.0),
                    ui.visuals().weak_text_color(),
                );
            }
            Some(img) => {
                // Side by side when comparing overlays, one image otherwise.
                let panes: Vec<_> = if state.settings.compare.is_some() && state.settings.overlay.enabled {
                    variants.clone()
                } else {
                    vec![variants[0]]
                };
                let n = panes.len() as f32;
                let gap = 8.0;
                let pane_w = (rect.width() - gap * (n - 1.0)) / n;
                for (i, v) in panes.iter().enumerate() {
                    let pane = Rect::from_min_size(
                        pos2(rect.left() + i as f32 * (pane_w + gap), rect.top()),
                        Vec2::new(pane_w, rect.height() - 24.0),
                    );
                    let fit = fit_rect(pane, img.width as f32, img.height as f32);
                    let uv = Rect::from_min_max(pos2(0.0, 0.0), pos2(1.0, 1.0));
                    painter.image(img.texture.id(), fit, uv, Color32::WHITE);
                    if let Some(tex) = state.overlays.get(v).filter(|_| state.settings.overlay.enabled) {
                        // The layer carries its opacity, the dimmed unseen part and the outline
                        // (explain::overlay_layer, as `vit-workbench explain` draws it).
                        painter.image(tex.id(), fit, uv, Color32::WHITE);
                    }
                    if panes.len() > 1 || state.settings.overlay.enabled {
                        painter.text(
                            pos2(fit.left() + 6.0, fit.top() + 6.0),
                            egui::Align2::LEFT_TOP,
                            v.name(),
                            egui::FontId::proportional(15.0),
                            Color32::WHITE,
                        );
                    }
                }
                let caption = format!("{}  ({}x{})", img.name, img.width, img.height);
                painter.text(
                    pos2(rect.left(), rect.bottom() - 18.0),
                    egui::Align2::LEFT_TOP,
                    caption,
                    egui::FontId::proportional(12.0),
                    ui.visuals().weak_text_color(),
                );
                if state.settings.overlay.enabled {
                    legend(
                        &painter,
                        Rect::from_min_size(pos2(rect.right() - 240.0, rect.bottom() - 20.0), Vec2::new(200.0, 12.0)),
                        state.settings.overlay.cmap,
                        ui.visuals().text_color(),
                    );
                }
            }
        }
        if hovering {
            painter.rect_filled(rect, 8.0, Color32::from_rgba_unmultiplied(40, 120, 255, 60));
            painter.rect_stroke(
                rect.shrink(2.0),
                8.0,
                Stroke::new(3.0, Color32::from_rgb(80, 160, 255)),
                egui::StrokeKind::Inside,
            );
            painter.text(
                rect.center(),
                egui::Align2::CENTER_CENTER,
                "Drop to classify",
                egui::FontId::proportional(24.0),
                Color32::WHITE,
            );
        }
    }

    fn overlay_controls(&mut self, ui: &mut Ui, state: &mut AppState, actions: &mut Vec<Action>) {
        let before = state.settings.overlay.clone();
        let class_text = explained_class(state);
        let o = &mut state.settings.overlay;
        ui.horizontal_wrapped(|ui| {
            ui.checkbox(&mut o.enabled, "Attention overlay");
            ui.add_enabled_ui(o.enabled, |ui| {
                ui.selectable_value(&mut o.mode, OverlayMode::Attribution, "Attribution")
                    .on_hover_text("what in the image speaks for a class (Chefer et al. 2021)");
                ui.selectable_value(&mut o.mode, OverlayMode::Rollout, "Rollout");
                ui.selectable_value(&mut o.mode, OverlayMode::Raw, "Raw layer/head");
                match o.mode {
                    OverlayMode::Attribution => {
                        ui.label(&class_text).on_hover_text("click a class in the top-5 list to explain it");
                    }
                    OverlayMode::Rollout => {
                        egui::ComboBox::from_label("head fusion")
                            .selected_text(format!("{:?}", o.fusion))
                            .width(70.0)
                            .show_ui(ui, |ui| {
                                for f in [HeadFusion::Mean, HeadFusion::Max, HeadFusion::Min] {
                                    ui.selectable_value(&mut o.fusion, f, format!("{f:?}"));
                                }
                            });
                        ui.add(egui::Slider::new(&mut o.discard_ratio, 0.0..=0.99).text("discard"));
                    }
                    OverlayMode::Raw => {
                        let (depth, heads) = state.model.as_ref().map_or((12, 12), |m| (m.depth, m.heads));
                        o.layer = o.layer.min(depth.saturating_sub(1));
                        ui.add(egui::Slider::new(&mut o.layer, 0..=depth.saturating_sub(1)).text("layer"));
                        let mut head = o.head.map_or(-1i64, |h| h as i64);
                        ui.add(egui::Slider::new(&mut head, -1..=heads as i64 - 1).text("head (-1: mean)"));
                        o.head = (head >= 0).then_some(head as usize);
                    }
                }
                ui.add(egui::Slider::new(&mut o.opacity, 0.0..=1.0).text("opacity"));
                for c in [Colormap::Inferno, Colormap::Viridis] {
                    ui.selectable_value(&mut o.cmap, c, c.name());
                }
            });
        });
        let after = &state.settings.overlay;
        // The on/off switch is applied when drawing; the rest needs new layers (the worker keeps
        // the last map, so opacity and colormap changes only redraw it).
        let restyled = after.cmap != before.cmap || after.opacity != before.opacity;
        if after.enabled && (after.map() != before.map() || restyled || !before.enabled) {
            actions.push(Action::RecomputeOverlay);
        }
    }
}

/// Which class the attribution explains, as a label.
fn explained_class(state: &AppState) -> String {
    let top = state.result(state.settings.active_variants()[0]).map(|r| &r.top5);
    match (state.settings.overlay.class, top) {
        (Some(k), t) => {
            let p = t.and_then(|t| t.iter().find(|p| p.index == k));
            format!("class: {}", p.map_or(format!("class {k}"), |p| p.label.clone()))
        }
        (None, Some(t)) => format!("class: {} (top-1)", t[0].label),
        (None, None) => "class: the top-1".to_string(),
    }
}

/// The largest rect of the image's aspect that fits in `area`, centred.
pub fn fit_rect(area: Rect, w: f32, h: f32) -> Rect {
    let s = (area.width() / w).min(area.height() / h).max(0.0);
    Rect::from_center_size(area.center(), Vec2::new(w * s, h * s))
}

fn legend(painter: &egui::Painter, rect: Rect, cmap: Colormap, text: Color32) {
    let steps = 40;
    for i in 0..steps {
        let c = cmap.map(i as f32 / (steps - 1) as f32);
        let x0 = rect.left() + rect.width() * i as f32 / steps as f32;
        let r = Rect::from_min_max(pos2(x0, rect.top()), pos2(x0 + rect.width() / steps as f32 + 0.5, rect.bottom()));
        painter.rect_filled(r, 0.0, Color32::from_rgb(c[0], c[1], c[2]));
    }
    let font = egui::FontId::proportional(11.0);
    painter.text(pos2(rect.left() - 4.0, rect.center().y), egui::Align2::RIGHT_CENTER, "low", font.clone(), text);
    painter.text(pos2(rect.right() + 4.0, rect.center().y), egui::Align2::LEFT_CENTER, "high", font, text);
}
