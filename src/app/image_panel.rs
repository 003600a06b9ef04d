//! The image with its attention overlay, the drop zone, and the overlay controls.

use egui::{Color32, Rect, Sense, Stroke, Ui, Vec2, pos2};

use super::Action;
use super::state::{AppState, OverlayMode};
use crate::explain::{Colormap, HeadFusion};

pub struct ImagePanel;

impl ImagePanel {
    pub fn ui(&mut self, ui: &mut Ui, state: &AppState, hovering: bool, actions: &mut Vec<Action>) {
        // The panel's own rect: the image area never grows past it, whatever the controls do.
        let full = ui.max_rect();
        self.overlay_controls(ui, state, actions);
        ui.separator();
        let top = ui.cursor().top().min(full.bottom());
        let rect = Rect::from_min_max(pos2(full.left(), top), full.max);
        ui.allocate_rect(rect, Sense::hover());
        let painter = ui.painter_at(rect);
        let variants = state.active_variants();
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
                let panes: Vec<_> = if variants.len() > 1 && state.settings.overlay.enabled {
                    variants.clone()
                } else {
                    vec![variants[0]]
                };
                let n = panes.len() as f32;
                let gap = 8.0;
                let pane_w = ((rect.width() - gap * (n - 1.0)) / n).max(0.0);
                // The bottom row holds the caption and the colour legend.
                let pane_h = (rect.height() - CAPTION_HEIGHT).max(0.0);
                for (i, v) in panes.iter().enumerate() {
                    let pane = Rect::from_min_size(
                        pos2(rect.left() + i as f32 * (pane_w + gap), rect.top()),
                        Vec2::new(pane_w, pane_h),
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
                            state.label(*v),
                            egui::FontId::proportional(15.0),
                            Color32::WHITE,
                        );
                    }
                }
                let legend_w = if state.settings.overlay.enabled { LEGEND_WIDTH } else { 0.0 };
                let caption = img.caption();
                let caption_font = egui::FontId::proportional(12.0);
                let caption_color = ui.visuals().weak_text_color();
                // Cut the caption (from the left: the file name is at the end) to what the legend leaves.
                let galley = ui.painter().layout(
                    elide_left(ui, &caption, &caption_font, (rect.width() - legend_w - 8.0).max(0.0)),
                    caption_font,
                    caption_color,
                    f32::INFINITY,
                );
                painter.galley(pos2(rect.left(), rect.bottom() - CAPTION_HEIGHT + 4.0), galley, caption_color);
                if state.settings.overlay.enabled && rect.width() >= LEGEND_WIDTH {
                    legend(
                        &painter,
                        Rect::from_min_size(
                            pos2(rect.right() - LEGEND_WIDTH + 36.0, rect.bottom() - CAPTION_HEIGHT + 5.0),
                            Vec2::new(LEGEND_WIDTH - 72.0, 12.0),
                        ),
                        state.settings.overlay.cmap,
                        ui.visuals().text_color(),
                    );
                }
            }
        }
        if let Some(name) = &state.decoding {
            // Large images take seconds to decode; the old one stays until the new one is in.
            let text = format!("decoding {name}…");
            let font = egui::FontId::proportional(16.0);
            let galley = ui.painter().layout_no_wrap(text, font, Color32::WHITE);
            let r = Rect::from_center_size(rect.center(), galley.size() + Vec2::new(48.0, 16.0));
            painter.rect_filled(r, 6.0, Color32::from_black_alpha(190));
            painter.galley(pos2(r.left() + 36.0, r.top() + 8.0), galley, Color32::WHITE);
            let spin = Rect::from_center_size(pos2(r.left() + 18.0, r.center().y), Vec2::splat(16.0));
            ui.put(spin, egui::Spinner::new().color(Color32::WHITE));
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

    fn overlay_controls(&mut self, ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
        // The panel edits a copy; the app applies it (and decides whether maps are recomputed).
        let mut o = state.settings.overlay.clone();
        // Flat widgets (no nested groups) so the row wraps between them at any width.
        ui.horizontal_wrapped(|ui| {
            ui.checkbox(&mut o.enabled, "Attention overlay");
            let on = o.enabled;
            let modes =
                [(OverlayMode::Attribution, "Attribution"), (OverlayMode::Rollout, "Rollout"), (OverlayMode::Raw, "Raw layer/head")];
            for (mode, text) in modes {
                if ui.add_enabled(on, egui::Button::selectable(o.mode == mode, text)).clicked() {
                    o.mode = mode;
                }
            }
            ui.separator();
            match o.mode {
                OverlayMode::Attribution => {
                    ui.add_enabled(on, egui::Label::new(explained_class(state)).extend())
                        .on_hover_text("what in the image speaks for this class (Chefer et al. 2021); click a class in the top-5 list to explain it");
                }
                OverlayMode::Rollout => {
                    keep_together(ui, 150.0);
                    let label = ui.add_enabled(on, egui::Label::new("head fusion").extend());
                    ui.add_enabled_ui(on, |ui| {
                        egui::ComboBox::from_id_salt("head fusion")
                            .selected_text(format!("{:?}", o.fusion))
                            .width(60.0)
                            .show_ui(ui, |ui| {
                                for f in [HeadFusion::Mean, HeadFusion::Max, HeadFusion::Min] {
                                    ui.selectable_value(&mut o.fusion, f, format!("{f:?}"));
                                }
                            })
                            .response
                            .labelled_by(label.id);
                    });
                    keep_together(ui, 230.0);
                    let label = ui.add_enabled(on, egui::Label::new("discard").extend());
                    ui.add_enabled(on, egui::Slider::new(&mut o.discard_ratio, 0.0..=0.99).fixed_decimals(2))
                        .labelled_by(label.id)
                        .on_hover_text("share of the weakest attention dropped before rolling out");
                }
                OverlayMode::Raw => {
                    let (depth, heads) = state.model.as_ref().map_or((12, 12), |m| (m.depth, m.heads));
                    o.layer = o.layer.min(depth.saturating_sub(1));
                    keep_together(ui, 220.0);
                    let label = ui.add_enabled(on, egui::Label::new("layer").extend());
                    ui.add_enabled(on, egui::Slider::new(&mut o.layer, 0..=depth.saturating_sub(1)))
                        .labelled_by(label.id);
                    let mut head = o.head.map_or(-1i64, |h| h as i64);
                    keep_together(ui, 220.0);
                    let label = ui.add_enabled(on, egui::Label::new("head").extend());
                    ui.add_enabled(on, egui::Slider::new(&mut head, -1..=heads as i64 - 1))
                        .labelled_by(label.id)
                        .on_hover_text("-1: the mean of the heads");
                    o.head = (head >= 0).then_some(head as usize);
                }
            }
            ui.separator();
            keep_together(ui, 230.0);
            let label = ui.add_enabled(on, egui::Label::new("opacity").extend());
            ui.add_enabled(on, egui::Slider::new(&mut o.opacity, 0.0..=1.0).fixed_decimals(2)).labelled_by(label.id);
            keep_together(ui, 130.0);
            for c in [Colormap::Inferno, Colormap::Viridis] {
                if ui.add_enabled(on, egui::Button::selectable(o.cmap == c, c.name())).clicked() {
                    o.cmap = c;
                }
            }
        });
        if o != state.settings.overlay {
            actions.push(Action::SetOverlay(o));
        }
    }
}

/// Starts a new row unless `width` (a label with its widget) fits on this one: a slider is
/// a group that a wrapping row cannot split, so it would run off the panel instead.
fn keep_together(ui: &mut Ui, width: f32) {
    if ui.available_size_before_wrap().x < width {
        ui.end_row();
    }
}

/// Height of the row under the images: caption and colour legend.
const CAPTION_HEIGHT: f32 = 22.0;
/// Width the colour legend takes, its "low" and "high" labels included.
const LEGEND_WIDTH: f32 = 240.0;

/// `text` cut from the left with "…" so it fits `width` in `font`.
fn elide_left(ui: &Ui, text: &str, font: &egui::FontId, width: f32) -> String {
    let fits = |t: &str| ui.painter().layout_no_wrap(t.to_string(), font.clone(), Color32::WHITE).size().x <= width;
    if fits(text) {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    let cut = |start: usize| -> String { std::iter::once('…').chain(chars[start..].iter().copied()).collect() };
    // The fewest characters dropped that make it fit (fitting only gets easier as more go).
    let (mut lo, mut hi) = (1, chars.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fits(&cut(mid)) { hi = mid } else { lo = mid + 1 }
    }
    cut(lo)
}

/// Which class the attribution explains, as a label.
fn explained_class(state: &AppState) -> String {
    let top = state.result(state.primary()).map(|r| &r.top5);
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
