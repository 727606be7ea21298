// The voice page: microphone -> WS /v1/realtime (OpenAI Realtime protocol) -> speakers.
//
// Capture: an AudioWorklet turns the microphone into pcm16 at the AudioContext's rate (24 kHz
// when the browser allows it), sent as input_audio_buffer.append events. The server's VAD ends
// each turn and answers; audio deltas are scheduled back to back on the same AudioContext.
// When the user starts speaking over a reply, playback stops at once (the server cancels the
// response) and the reply is truncated to what was heard.
//
// Credentials: the page holds no API key. It opens each session with an ephemeral client secret
// (ek_..., one session each, docs/realtime.md "Client secrets"): one pasted by the user (made by
// their backend with an API key), or, when the gateway has no API keys, one it asks the gateway
// for (POST /v1/realtime/client_secrets, same origin). A secret may also come in the URL's
// fragment (#secret=ek_...), which never reaches a server; the page removes it from the address.
//
// URL parameters (for demos and tests): model, voice, modalities, silence_ms, threshold,
// max_tokens, autoconnect=1. Counters for tests live on window.spiritlm.
"use strict";

const OUTPUT_RATE = 24000;
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

const stats = {
  connected: false,
  sessionId: null,
  sentSamples: 0,
  receivedSamples: 0,
  receivedDeltas: 0,
  playedBuffers: 0,
  playedSamples: 0,
  responses: 0,
  responsesDone: [],
  firstAudioMs: null,
  speechStarted: 0,
  speechStopped: 0,
  transcripts: [],
  errors: [],
  closeReason: null,
  inputLevel: 0,
  events: {},
};
window.spiritlm = stats;

let socket = null;
let audio = null; // {context, stream, source, worklet, sink}
let playHead = 0;
let playing = new Set();
let turnEndedAt = null;
let firstAudioPending = false;
let current = null; // the assistant reply being played: {itemId, contentIndex, startedAt, bubble}
let userBubble = null;

function setStatus(text) {
  $("status").textContent = text;
}

// ---- credentials

const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("secret")) {
  $("secret").value = fragment.get("secret");
  history.replaceState(null, "", location.pathname + location.search);
}

// A client secret for one session: the pasted one (used up by this session), else a fresh one
// from the gateway, which hands them out without a key only when it has no API keys.
async function clientSecret() {
  const pasted = $("secret").value.trim();
  if (pasted) {
    $("secret").value = "";
    return pasted;
  }
  const session = { type: "realtime" };
  if ($("model").value) session.model = $("model").value;
  const response = await fetch("/v1/realtime/client_secrets", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ session }),
  });
  if (response.status === 401) {
    throw new Error(
      "this gateway has API keys: paste a client secret (ek_…) made with one " +
        "(POST /v1/realtime/client_secrets; each secret opens one session)",
    );
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const why = (body.error && body.error.message) || `HTTP ${response.status}`;
    throw new Error(`the gateway gave no client secret: ${why}`);
  }
  return body.value;
}

// Why a socket closed, in words (RFC 6455 codes; 1008/1013 are the gateway's, connection.py).
function closeInWords(event, opened) {
  if (!opened) {
    return (
      "The gateway refused the connection: the client secret has expired, was used already " +
      "(each opens one session), or is not valid for this gateway."
    );
  }
  const reason = event.reason ? `: ${event.reason}` : "";
  switch (event.code) {
    case 1000:
      return `Disconnected${reason}.`;
    case 1008:
      return `The gateway ended the session${reason}.`;
    case 1011:
      return "The gateway failed while serving the session (internal error).";
    case 1013:
      return `The gateway is busy or shutting down${reason}; try again.`;
    default:
      return `The connection was lost (code ${event.code})${reason}.`;
  }
}

function showError(text) {
  stats.errors.push({ message: text });
  addBubble("error", text);
}

async function loadChoices() {
  try {
    const response = await fetch("/v1/models");
    const body = await response.json();
    fillSelect($("model"), body.data.map((m) => [m.id, m.id]), params.get("model"));
  } catch (error) {
    fillSelect($("model"), [["", "default model"]], null);
  }
  await loadVoices();
}

async function loadVoices() {
  let voices = [0, 1, 2, 3].map((i) => [String(i), `speaker ${i}`]);
  let chosen = "2";
  try {
    const model = encodeURIComponent($("model").value);
    const response = await fetch(`/v1/audio/voices?model=${model}`);
    if (response.ok) {
      const body = await response.json();
      voices = body.data.map((v) => [v.id, v.name ? `${v.id} – ${v.name}` : `speaker ${v.id}`]);
      chosen = body.default || chosen;
    }
  } catch (error) {
    // keep the four preset speakers
  }
  fillSelect($("voice"), voices, params.get("voice") || chosen);
}

function fillSelect(select, options, wanted) {
  select.replaceChildren(
    ...options.map(([value, label]) => {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = label;
      return option;
    }),
  );
  if (wanted !== null && options.some(([value]) => value === wanted)) select.value = wanted;
}

function addBubble(kind, text) {
  const item = document.createElement("li");
  item.className = kind;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = kind === "user" ? "you" : kind === "assistant" ? "Spirit LM" : "error";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  item.append(who, body);
  $("transcript").append(item);
  item.scrollIntoView({ block: "end" });
  return body;
}

function send(event) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(event));
}

// ---- audio in

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

async function startAudio() {
  const context = new AudioContext({ sampleRate: OUTPUT_RATE });
  await context.resume();
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
  });
  await context.audioWorklet.addModule("/static/voice/capture-worklet.js");
  const source = context.createMediaStreamSource(stream);
  const worklet = new AudioWorkletNode(context, "pcm16-capture");
  // Keep the worklet pulled by the graph without hearing the microphone.
  const sink = context.createGain();
  sink.gain.value = 0;
  source.connect(worklet).connect(sink).connect(context.destination);
  worklet.port.onmessage = (message) => {
    showLevel(new Int16Array(message.data));
    if (!stats.connected) return;
    stats.sentSamples += message.data.byteLength / 2;
    send({ type: "input_audio_buffer.append", audio: toBase64(message.data) });
  };
  audio = { context, stream, source, worklet, sink };
}

// The input level meter: the chunk's RMS on a dB scale from -60 dBFS (empty) to 0 dBFS (full).
function showLevel(pcm) {
  let sum = 0;
  for (let i = 0; i < pcm.length; i++) sum += pcm[i] * pcm[i];
  const rms = Math.sqrt(sum / Math.max(1, pcm.length)) / 32768;
  const level = rms > 0 ? Math.max(0, 1 + (20 * Math.log10(rms)) / 60) : 0;
  stats.inputLevel = Math.max(stats.inputLevel, level);
  $("level").value = level;
}

function stopAudio() {
  if (!audio) return;
  $("level").value = 0;
  audio.worklet.port.onmessage = null;
  audio.stream.getTracks().forEach((track) => track.stop());
  audio.context.close();
  audio = null;
  playing = new Set();
}

// ---- audio out

function play(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
  if (!pcm.length || !audio) return;
  stats.receivedSamples += pcm.length;
  stats.receivedDeltas += 1;
  const buffer = audio.context.createBuffer(1, pcm.length, OUTPUT_RATE);
  const channel = buffer.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 32768;
  const node = audio.context.createBufferSource();
  node.buffer = buffer;
  node.connect(audio.context.destination);
  const now = audio.context.currentTime;
  playHead = Math.max(playHead, now + 0.03);
  if (current && current.startedAt === null) current.startedAt = playHead;
  node.start(playHead);
  playHead += buffer.duration;
  playing.add(node);
  node.onended = () => {
    if (!playing.delete(node)) return; // stopped by a barge-in, not played out
    stats.playedBuffers += 1;
    stats.playedSamples += pcm.length;
  };
}

function stopPlayback() {
  const stopped = playing;
  playing = new Set();
  stopped.forEach((node) => node.stop());
  if (audio) playHead = audio.context.currentTime;
  // Tell the server how much of the reply was actually heard.
  if (current && current.startedAt !== null && audio) {
    const heardMs = Math.max(0, Math.floor((audio.context.currentTime - current.startedAt) * 1000));
    send({
      type: "conversation.item.truncate",
      item_id: current.itemId,
      content_index: current.contentIndex,
      audio_end_ms: Math.min(heardMs, current.receivedMs()),
    });
  }
  current = null;
}

// ---- events from the server

const handlers = {
  "session.created": (e) => {
    stats.sessionId = e.session.id;
  },
  "session.updated": () => {
    stats.connected = true;
    setStatus("Listening… speak, then pause.");
  },
  "input_audio_buffer.speech_started": () => {
    stats.speechStarted += 1;
    if (playing.size) stopPlayback();
    userBubble = addBubble("user", "…");
    setStatus("Hearing you…");
  },
  "input_audio_buffer.speech_stopped": () => {
    stats.speechStopped += 1;
    turnEndedAt = performance.now();
    firstAudioPending = true;
    setStatus("Thinking…");
  },
  "conversation.item.input_audio_transcription.delta": (e) => {
    if (!userBubble || !e.delta) return;
    if (userBubble.textContent === "…") userBubble.textContent = "";
    userBubble.textContent += e.delta;
  },
  "conversation.item.input_audio_transcription.completed": (e) => {
    const text = e.transcript || "(speech)";
    if (userBubble) userBubble.textContent = text;
    stats.transcripts.push({ role: "user", text });
  },
  "response.created": () => {
    stats.responses += 1;
  },
  "response.content_part.added": (e) => {
    const bubble = addBubble("assistant", "");
    let received = 0;
    current = {
      itemId: e.item_id,
      contentIndex: e.content_index,
      startedAt: null,
      bubble,
      addReceived: (n) => (received += n),
      receivedMs: () => Math.floor((received * 1000) / OUTPUT_RATE),
    };
  },
  "response.output_audio.delta": (e) => {
    if (firstAudioPending && turnEndedAt !== null) {
      stats.firstAudioMs = Math.round(performance.now() - turnEndedAt);
      $("latency").textContent = `${stats.firstAudioMs} ms`;
      firstAudioPending = false;
    }
    if (current) current.addReceived((e.delta.length * 3) / 8);
    play(e.delta);
    setStatus("Speaking… (talk to interrupt)");
  },
  "response.output_audio_transcript.delta": (e) => appendReply(e.delta),
  "response.output_text.delta": (e) => appendReply(e.delta),
  "response.output_audio_transcript.done": (e) => finishReply(e.transcript),
  "response.output_text.done": (e) => finishReply(e.text),
  "response.done": (e) => {
    stats.responsesDone.push(e.response.status);
    const details = e.response.status_details;
    if (e.response.status === "cancelled" && details) {
      setStatus(details.reason === "turn_detected" ? "Interrupted; listening…" : "Cancelled.");
    } else if (e.response.status === "failed") {
      setStatus("The reply failed (see below).");
    } else {
      setStatus("Listening… speak, then pause.");
    }
  },
  "conversation.item.input_audio_transcription.failed": (e) => {
    if (userBubble) userBubble.textContent = "(not transcribed)";
    showError(`Your turn could not be transcribed: ${(e.error && e.error.message) || "unknown error"}`);
  },
  error: (e) => {
    stats.errors.push(e.error);
    const field = e.error.param ? ` (${e.error.param})` : "";
    addBubble("error", `${e.error.message}${field}`);
  },
};
// The beta dialect's names for the same events.
handlers["response.audio.delta"] = handlers["response.output_audio.delta"];
handlers["response.audio_transcript.delta"] = handlers["response.output_audio_transcript.delta"];
handlers["response.text.delta"] = handlers["response.output_text.delta"];

function appendReply(text) {
  if (current && text) current.bubble.textContent += text;
}

function finishReply(text) {
  if (current && text) current.bubble.textContent = text;
  if (text) stats.transcripts.push({ role: "assistant", text });
}

function onMessage(message) {
  let event;
  try {
    event = JSON.parse(message.data);
  } catch (error) {
    return;
  }
  stats.events[event.type] = (stats.events[event.type] || 0) + 1;
  const handler = handlers[event.type];
  if (handler) handler(event);
}

// ---- connect / disconnect

function sessionUpdate() {
  const modalities = $("modalities").value.split(",");
  const detection = { type: "server_vad", silence_duration_ms: Number(params.get("silence_ms") || 700) };
  if (params.get("threshold")) detection.threshold = Number(params.get("threshold"));
  const session = {
    type: "realtime",
    output_modalities: modalities,
    audio: {
      input: {
        format: { type: "audio/pcm", rate: audio.context.sampleRate },
        // The session's own model transcribes; an empty object means exactly that.
        transcription: $("model").value ? { model: $("model").value } : {},
        turn_detection: detection,
      },
      output: { format: { type: "audio/pcm", rate: OUTPUT_RATE }, voice: $("voice").value },
    },
  };
  if (params.get("max_tokens")) session.max_output_tokens = Number(params.get("max_tokens"));
  return { type: "session.update", session };
}

async function connect() {
  $("connect").disabled = true;
  setStatus("Starting the microphone…");
  let secret;
  try {
    secret = await clientSecret();
  } catch (error) {
    showError(`Cannot connect: ${error.message}.`);
    setStatus("Disconnected.");
    $("connect").disabled = false;
    return;
  }
  try {
    await startAudio();
  } catch (error) {
    const denied = error.name === "NotAllowedError";
    showError(denied ? "Microphone access was denied." : `Microphone unavailable: ${error.message}`);
    setStatus("Disconnected.");
    $("connect").disabled = false;
    return;
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // The secret is bound to its model (and session): no ?model= here.
  const protocols = ["realtime", `openai-insecure-api-key.${secret}`];
  socket = new WebSocket(`${scheme}//${location.host}/v1/realtime`, protocols);
  let opened = false;
  socket.onopen = () => {
    opened = true;
    send(sessionUpdate());
    setStatus("Connected.");
    const button = $("connect");
    button.textContent = "Disconnect";
    button.classList.add("live");
    button.disabled = false;
  };
  socket.onmessage = onMessage;
  socket.onclose = (event) => {
    stats.connected = false;
    stopAudio();
    socket = null;
    const button = $("connect");
    button.textContent = "Connect";
    button.classList.remove("live");
    button.disabled = false;
    const words = closeInWords(event, opened);
    stats.closeReason = words;
    if (event.code === 1000 && opened) setStatus(words);
    else {
      setStatus("Disconnected.");
      showError(words);
    }
  };
}

function disconnect() {
  if (socket) socket.close(1000, "user left");
}

function refreshMeters() {
  $("sent").textContent = (stats.sentSamples / (audio ? audio.context.sampleRate : OUTPUT_RATE)).toFixed(1);
  $("received").textContent = (stats.receivedSamples / OUTPUT_RATE).toFixed(1);
  $("played").textContent = String(stats.playedBuffers);
}

$("connect").addEventListener("click", () => (socket ? disconnect() : connect()));
$("model").addEventListener("change", loadVoices);
if (params.get("modalities")) $("modalities").value = params.get("modalities");
setInterval(refreshMeters, 250);
loadChoices().then(() => {
  if (params.get("autoconnect") === "1") connect();
});
