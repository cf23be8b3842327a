//! The tablet's window: shows the attached monitor with [`YuvRenderer`] and turns what the user
//! does in it (touch, pen, mouse, keyboard) into input events in the monitor's coordinates.
//!
//! winit owns the main thread; the network side (attach, receive, decode) runs on the tokio
//! runtime and talks to the window through a [`ToWindow`] (the latest decoded picture, a status
//! line, the end) and a channel of [`FromWindow`] messages (input, close).

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use winit::application::ApplicationHandler;
use winit::dpi::PhysicalSize;
use winit::event::{ElementState, MouseButton, MouseScrollDelta, TouchPhase, WindowEvent};
use winit::event_loop::{ActiveEventLoop, EventLoop, EventLoopProxy};
use winit::keyboard::{Key, NamedKey};
use winit::window::{Fullscreen, Window, WindowId};

use periphery_protocol::media::{WireButton, WireInput, WireTouch};

use crate::present::{adapter, describe, device, PresentError, Viewport, YuvRenderer};
use crate::viewer::Decoded;

/// What the window sends the network side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromWindow {
    /// An input event in monitor coordinates.
    Input(WireInput),
    /// The user closed the window.
    Close,
}

/// Events for the window from the network side.
#[derive(Debug)]
enum UiEvent {
    Frame,
    Status(String),
    Finished,
}

/// The network side's handle on the window.
#[derive(Clone)]
pub struct ToWindow {
    proxy: EventLoopProxy<UiEvent>,
    slot: Arc<Mutex<Option<Decoded>>>,
}

impl std::fmt::Debug for ToWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToWindow").finish_non_exhaustive()
    }
}

impl ToWindow {
    /// Hands the window a new picture; one not shown yet is replaced (the window shows the
    /// newest, it never queues).
    pub fn frame(&self, d: &Decoded) {
        let was_empty = {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            slot.replace(d.clone()).is_none()
        };
        if was_empty {
            let _ = self.proxy.send_event(UiEvent::Frame);
        }
    }

    /// Shows `line` in the window's title.
    pub fn status(&self, line: String) {
        let _ = self.proxy.send_event(UiEvent::Status(line));
    }

    /// Closes the window: the session ended.
    pub fn finished(&self) {
        let _ = self.proxy.send_event(UiEvent::Finished);
    }
}

/// How the window is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizing {
    /// Full screen: the window is the monitor, sized like this screen.
    FullScreen,
    /// A window of about this size (the picture is scaled into it).
    Windowed(u32, u32),
}

/// Everything the GPU side holds once the window exists.
struct Gpu {
    window: Arc<Window>,
    surface: wgpu::Surface<'static>,
    config: wgpu::SurfaceConfiguration,
    view_format: wgpu::TextureFormat,
    device: wgpu::Device,
    queue: wgpu::Queue,
    renderer: YuvRenderer,
}

struct App<F> {
    title: String,
    sizing: Sizing,
    /// Called once with the screen's size when the window exists: starts the network side.
    start: Option<F>,
    to_window: ToWindow,
    from_window: mpsc::Sender<FromWindow>,
    gpu: Option<Gpu>,
    error: Option<PresentError>,
    cursor: Option<(i32, i32)>,
    scroll: (f64, f64),
}

impl<F: FnOnce((u32, u32), ToWindow)> App<F> {
    fn send(&self, m: FromWindow) {
        // A full channel means the network is stalled; pointer moves can go, the rest waits
        // for room only briefly (the window must stay responsive).
        if let Err(mpsc::error::TrySendError::Full(m)) = self.from_window.try_send(m) {
            if !matches!(m, FromWindow::Input(WireInput::PointerMove { .. })) {
                let _ = self.from_window.blocking_send(m);
            }
        }
    }

    fn create(&mut self, event_loop: &ActiveEventLoop) -> Result<(), PresentError> {
        let screen = event_loop
            .primary_monitor()
            .or_else(|| event_loop.available_monitors().next())
            .map(|m| m.size())
            .filter(|s| s.width > 0 && s.height > 0)
            .unwrap_or(PhysicalSize::new(1280, 800));
        let mut attrs = Window::default_attributes().with_title(self.title.clone());
        attrs = match self.sizing {
            Sizing::FullScreen => attrs
                .with_inner_size(screen)
                .with_fullscreen(Some(Fullscreen::Borderless(None))),
            Sizing::Windowed(w, h) => {
                let vp = Viewport::fit((w, h), (screen.width, screen.height));
                attrs.with_inner_size(PhysicalSize::new(w.min(vp.width), h.min(vp.height)))
            }
        };
        let window = Arc::new(
            event_loop
                .create_window(attrs)
                .map_err(|e| PresentError::Window(e.to_string()))?,
        );
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_with_display_handle_from_env(
                Box::new(event_loop.owned_display_handle()),
            ));
        let surface = instance
            .create_surface(window.clone())
            .map_err(|e| PresentError::Window(e.to_string()))?;
        let adapter = pollster::block_on(adapter(&instance, Some(&surface)))?;
        tracing::info!(adapter = %describe(&adapter.get_info()), "presenting");
        eprintln!("presenting with {}", describe(&adapter.get_info()));
        let (device, queue) = pollster::block_on(device(&adapter))?;
        let size = window.inner_size();
        let mut config = surface
            .get_default_config(&adapter, size.width.max(1), size.height.max(1))
            .ok_or_else(|| {
                PresentError::Window("the adapter cannot present to this window".into())
            })?;
        // The pictures are gamma-encoded already: draw through a non-sRGB view.
        let view_format = config.format.remove_srgb_suffix();
        config.view_formats = vec![view_format];
        config.present_mode = wgpu::PresentMode::AutoVsync;
        surface.configure(&device, &config);
        let renderer = YuvRenderer::new(&device, view_format, wgpu::FilterMode::Linear);
        self.gpu = Some(Gpu {
            window,
            surface,
            config,
            view_format,
            device,
            queue,
            renderer,
        });
        if let Some(start) = self.start.take() {
            start((screen.width, screen.height), self.to_window.clone());
        }
        Ok(())
    }

    fn redraw(&mut self) {
        let Some(g) = self.gpu.as_mut() else { return };
        let frame = match g.surface.get_current_texture() {
            wgpu::CurrentSurfaceTexture::Success(t)
            | wgpu::CurrentSurfaceTexture::Suboptimal(t) => t,
            wgpu::CurrentSurfaceTexture::Timeout | wgpu::CurrentSurfaceTexture::Occluded => return,
            _ => {
                g.surface.configure(&g.device, &g.config);
                g.window.request_redraw();
                return;
            }
        };
        let view = frame.texture.create_view(&wgpu::TextureViewDescriptor {
            format: Some(g.view_format),
            ..Default::default()
        });
        let viewport = g
            .renderer
            .picture_size()
            .map(|p| Viewport::fit(p, (g.config.width, g.config.height)))
            .unwrap_or(Viewport::fit((1, 1), (0, 0)));
        let mut encoder = g.device.create_command_encoder(&Default::default());
        g.renderer.draw(&mut encoder, &view, viewport);
        g.queue.submit([encoder.finish()]);
        g.window.pre_present_notify();
        g.queue.present(frame);
    }

    /// Window pixels to monitor pixels, if the point is on the picture.
    fn to_monitor(&self, x: f64, y: f64) -> Option<(i32, i32)> {
        let g = self.gpu.as_ref()?;
        let picture = g.renderer.picture_size()?;
        Viewport::fit(picture, (g.config.width, g.config.height)).to_picture(picture, x, y)
    }
}

impl<F: FnOnce((u32, u32), ToWindow)> ApplicationHandler<UiEvent> for App<F> {
    fn resumed(&mut self, event_loop: &ActiveEventLoop) {
        if self.gpu.is_some() {
            return;
        }
        if let Err(e) = self.create(event_loop) {
            self.error = Some(e);
            event_loop.exit();
        }
    }

    fn user_event(&mut self, event_loop: &ActiveEventLoop, event: UiEvent) {
        match event {
            UiEvent::Frame => {
                let d = self
                    .to_window
                    .slot
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                if let (Some(d), Some(g)) = (d, self.gpu.as_mut()) {
                    g.renderer.upload(&g.device, &g.queue, &d.image);
                    g.window.request_redraw();
                }
            }
            UiEvent::Status(line) => {
                if let Some(g) = &self.gpu {
                    g.window.set_title(&format!("{} — {line}", self.title));
                }
            }
            UiEvent::Finished => event_loop.exit(),
        }
    }

    fn window_event(&mut self, event_loop: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        match event {
            WindowEvent::CloseRequested => {
                self.send(FromWindow::Close);
                // The network side detaches, then calls `finished`; if it is gone, leave now.
                if self.from_window.is_closed() {
                    event_loop.exit();
                }
            }
            WindowEvent::Resized(size) => {
                if let Some(g) = self.gpu.as_mut() {
                    g.config.width = size.width.max(1);
                    g.config.height = size.height.max(1);
                    g.surface.configure(&g.device, &g.config);
                    g.window.request_redraw();
                }
            }
            WindowEvent::RedrawRequested => self.redraw(),
            WindowEvent::CursorMoved { position, .. } => {
                self.cursor = self.to_monitor(position.x, position.y);
                if let Some((x, y)) = self.cursor {
                    self.send(FromWindow::Input(WireInput::PointerMove { x, y }));
                }
            }
            WindowEvent::CursorLeft { .. } => self.cursor = None,
            WindowEvent::MouseInput { state, button, .. } => {
                let button = match button {
                    MouseButton::Left => WireButton::Left,
                    MouseButton::Middle => WireButton::Middle,
                    MouseButton::Right => WireButton::Right,
                    _ => return,
                };
                if self.cursor.is_some() || state == ElementState::Released {
                    self.send(FromWindow::Input(WireInput::Button {
                        button,
                        down: state == ElementState::Pressed,
                    }));
                }
            }
            WindowEvent::MouseWheel { delta, .. } => {
                let (dx, dy) = match delta {
                    MouseScrollDelta::LineDelta(x, y) => (f64::from(x), f64::from(y)),
                    // Pixel deltas (touchpads) accumulate into steps of 40 px.
                    MouseScrollDelta::PixelDelta(p) => (p.x / 40.0, p.y / 40.0),
                };
                self.scroll.0 += dx;
                self.scroll.1 += dy;
                let (sx, sy) = (self.scroll.0.trunc(), self.scroll.1.trunc());
                if sx != 0.0 || sy != 0.0 {
                    self.scroll.0 -= sx;
                    self.scroll.1 -= sy;
                    // winit: positive y scrolls up; the wire: positive dy scrolls down.
                    self.send(FromWindow::Input(WireInput::Scroll {
                        dx: sx as i32,
                        dy: -sy as i32,
                    }));
                }
            }
            WindowEvent::Touch(t) => {
                let phase = match t.phase {
                    TouchPhase::Started => WireTouch::Start,
                    TouchPhase::Moved => WireTouch::Move,
                    TouchPhase::Ended | TouchPhase::Cancelled => WireTouch::End,
                };
                if let Some((x, y)) = self.to_monitor(t.location.x, t.location.y) {
                    self.send(FromWindow::Input(WireInput::Touch {
                        id: (t.id & 0xffff_ffff) as u32,
                        phase,
                        x,
                        y,
                    }));
                }
            }
            WindowEvent::KeyboardInput { event, .. } => {
                if let Some(keysym) = keysym(&event.logical_key) {
                    self.send(FromWindow::Input(WireInput::Key {
                        keysym,
                        down: event.state == ElementState::Pressed,
                    }));
                }
            }
            _ => {}
        }
    }
}

/// The X keysym for a winit key, where there is one.
pub fn keysym(key: &Key) -> Option<u32> {
    match key {
        Key::Character(s) => {
            let mut chars = s.chars();
            let c = chars.next()?;
            if chars.next().is_some() {
                return None;
            }
            let cp = u32::from(c);
            Some(match cp {
                // Latin-1 keysyms are the code points.
                0x20..=0x7e | 0xa0..=0xff => cp,
                // Everything else: the Unicode keysym range.
                0x100.. => 0x0100_0000 | cp,
                _ => return None,
            })
        }
        Key::Named(n) => Some(match n {
            NamedKey::Space => 0x20,
            NamedKey::Backspace => 0xff08,
            NamedKey::Tab => 0xff09,
            NamedKey::Enter => 0xff0d,
            NamedKey::Pause => 0xff13,
            NamedKey::ScrollLock => 0xff14,
            NamedKey::Escape => 0xff1b,
            NamedKey::Home => 0xff50,
            NamedKey::ArrowLeft => 0xff51,
            NamedKey::ArrowUp => 0xff52,
            NamedKey::ArrowRight => 0xff53,
            NamedKey::ArrowDown => 0xff54,
            NamedKey::PageUp => 0xff55,
            NamedKey::PageDown => 0xff56,
            NamedKey::End => 0xff57,
            NamedKey::PrintScreen => 0xff61,
            NamedKey::Insert => 0xff63,
            NamedKey::ContextMenu => 0xff67,
            NamedKey::NumLock => 0xff7f,
            NamedKey::F1 => 0xffbe,
            NamedKey::F2 => 0xffbf,
            NamedKey::F3 => 0xffc0,
            NamedKey::F4 => 0xffc1,
            NamedKey::F5 => 0xffc2,
            NamedKey::F6 => 0xffc3,
            NamedKey::F7 => 0xffc4,
            NamedKey::F8 => 0xffc5,
            NamedKey::F9 => 0xffc6,
            NamedKey::F10 => 0xffc7,
            NamedKey::F11 => 0xffc8,
            NamedKey::F12 => 0xffc9,
            NamedKey::Shift => 0xffe1,
            NamedKey::Control => 0xffe3,
            NamedKey::CapsLock => 0xffe5,
            NamedKey::Alt => 0xffe9,
            NamedKey::AltGraph => 0xfe03,
            NamedKey::Super | NamedKey::Meta => 0xffeb,
            NamedKey::Delete => 0xffff,
            _ => return None,
        }),
        _ => None,
    }
}

/// Runs the window on this (the main) thread until the session ends or the user closes it.
///
/// `start` is called once the window exists, with the screen's size (what an extending tablet
/// asks for) and the handle the network side feeds the window through; input arrives on the
/// returned channel's receiver, which `start` must take from `input`.
pub fn run<F>(
    title: String,
    sizing: Sizing,
    input: mpsc::Sender<FromWindow>,
    start: F,
) -> Result<(), PresentError>
where
    F: FnOnce((u32, u32), ToWindow),
{
    let event_loop = EventLoop::<UiEvent>::with_user_event()
        .build()
        .map_err(|e| {
            PresentError::Window(format!(
                "no display to open a window on ({e}); use --headless"
            ))
        })?;
    let mut app = App {
        title,
        sizing,
        start: Some(start),
        to_window: ToWindow {
            proxy: event_loop.create_proxy(),
            slot: Arc::new(Mutex::new(None)),
        },
        from_window: input,
        gpu: None,
        error: None,
        cursor: None,
        scroll: (0.0, 0.0),
    };
    event_loop
        .run_app(&mut app)
        .map_err(|e| PresentError::Window(e.to_string()))?;
    match app.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_x_keysyms() {
        assert_eq!(keysym(&Key::Character("a".into())), Some(0x61));
        assert_eq!(keysym(&Key::Character("A".into())), Some(0x41));
        assert_eq!(keysym(&Key::Character("é".into())), Some(0xe9));
        assert_eq!(keysym(&Key::Character("€".into())), Some(0x0100_20ac));
        assert_eq!(
            keysym(&Key::Character("ab".into())),
            None,
            "one key, one keysym"
        );
        assert_eq!(keysym(&Key::Named(NamedKey::Enter)), Some(0xff0d));
        assert_eq!(keysym(&Key::Named(NamedKey::ArrowLeft)), Some(0xff51));
        assert_eq!(keysym(&Key::Named(NamedKey::F12)), Some(0xffc9));
        // Every mapped keysym passes the appliance's validation.
        for k in [
            Key::Character("€".into()),
            Key::Named(NamedKey::Delete),
            Key::Named(NamedKey::AltGraph),
            Key::Named(NamedKey::Space),
        ] {
            let s = keysym(&k).expect("mapped");
            assert!(
                periphery_protocol::media::known_keysym(s),
                "{k:?} -> {s:#x}"
            );
        }
    }
}
