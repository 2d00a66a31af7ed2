// Copy buttons for pull commands, and push times shown in the browser's own time zone.
document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  const field = document.getElementById(button.dataset.copy);
  field.select();
  const done = () => { button.textContent = "Copied"; setTimeout(() => { button.textContent = "Copy"; }, 1500); };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(field.value).then(done, () => { document.execCommand("copy"); done(); });
  } else {
    document.execCommand("copy");
    done();
  }
});
document.addEventListener("DOMContentLoaded", () => {
  for (const t of document.querySelectorAll("time[data-epoch]")) {
    const when = new Date(parseFloat(t.dataset.epoch) * 1000);
    t.dateTime = when.toISOString();
    t.textContent = when.toLocaleString();
  }
});
