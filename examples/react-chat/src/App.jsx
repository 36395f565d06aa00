import { useChat } from '@ai-sdk/react';
import { DefaultChatTransport } from 'ai';
import { useEffect, useState } from 'react';

/** The chat of this page: `?chat=ID` in the address, a new one when there is none. */
function chatIdFromAddress() {
  const url = new URL(window.location.href);
  let id = url.searchParams.get('chat');
  if (!id) {
    id = crypto.randomUUID().replaceAll('-', '');
    url.searchParams.set('chat', id);
    window.history.replaceState(null, '', url);
  }
  return id;
}

export function App() {
  const [chatId] = useState(chatIdFromAddress);
  // The server holds the history: a reload starts from it, then resumes a live reply.
  const [loaded, setLoaded] = useState(null);
  const [loadError, setLoadError] = useState(null);
  useEffect(() => {
    fetch(`/api/chat/${chatId}/messages`)
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`${r.status} ${r.statusText}`))))
      .then(setLoaded, setLoadError);
  }, [chatId]);
  if (loadError) return <p className="error">Could not load the chat: {String(loadError.message)}</p>;
  if (!loaded) return <p className="muted">Loading…</p>;
  return <Chat id={chatId} initialMessages={loaded} />;
}

function Chat({ id, initialMessages }) {
  const { messages, sendMessage, status, stop, regenerate, error, clearError } = useChat({
    id,
    messages: initialMessages,
    // On mount: GET /api/chat/{id}/stream, the live reply from its first chunk (or 204).
    resume: true,
    transport: new DefaultChatTransport({ api: '/api/chat' }),
  });
  const [input, setInput] = useState('');
  const busy = status === 'submitted' || status === 'streaming';

  async function onStop() {
    // stop() only closes this page's response; the server keeps generating until told to stop.
    await Promise.all([stop(), fetch(`/api/chat/${id}/stop`, { method: 'POST' })]);
  }

  function onSubmit(e) {
    e.preventDefault();
    if (!input.trim() || busy) return;
    sendMessage({ text: input });
    setInput('');
  }

  return (
    <main>
      <header>
        <h1>chatstream · useChat</h1>
        <span className="muted" data-testid="status">{status}</span>
      </header>
      <ol className="messages" aria-live="polite">
        {messages.map((m) => (
          <Message key={m.id} message={m} />
        ))}
      </ol>
      {error && (
        <p className="error" role="alert">
          {error.message} <button onClick={clearError}>Dismiss</button>
        </p>
      )}
      <form onSubmit={onSubmit}>
        <input
          aria-label="Message"
          value={input}
          onChange={(e) => setInput(e.target.value)}
          placeholder="Say something"
          autoFocus
        />
        {busy ? (
          <button type="button" onClick={onStop}>
            Stop
          </button>
        ) : (
          <button type="submit" disabled={!input.trim()}>
            Send
          </button>
        )}
        <button
          type="button"
          onClick={() => regenerate()}
          disabled={busy || !messages.some((m) => m.role === 'assistant')}
        >
          Regenerate
        </button>
      </form>
    </main>
  );
}

function Message({ message }) {
  const status = message.metadata?.status;
  return (
    <li className={`message ${message.role}`} data-role={message.role} data-status={status}>
      {message.parts.map((part, i) => (
        <Part key={i} part={part} />
      ))}
      {message.role === 'assistant' && status && status !== 'complete' && (
        <small className="muted">
          {status}
          {message.metadata?.error ? `: ${message.metadata.error}` : ''}
        </small>
      )}
    </li>
  );
}

function Part({ part }) {
  if (part.type === 'text') return <p className="text">{part.text}</p>;
  if (part.type === 'reasoning')
    return (
      <details className="reasoning">
        <summary>Reasoning</summary>
        <p>{part.text}</p>
      </details>
    );
  if (part.type.startsWith('tool-'))
    return (
      <pre className="tool">
        {part.type.slice('tool-'.length)}({JSON.stringify(part.input ?? part.rawInput ?? null)})
        {part.state === 'output-available' ? ` → ${JSON.stringify(part.output)}` : ''}
        {part.errorText ? ` ✗ ${part.errorText}` : ''}
      </pre>
    );
  return null;
}
