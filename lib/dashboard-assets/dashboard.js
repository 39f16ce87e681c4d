// The dashboard page's script: one WebSocket to the server's live route, a sample a second,
// uPlot charts and a connections table. Every string from the server (user ids come from
// tokens and are attacker-controlled) reaches the page through textContent only.
'use strict'

;(function () {
  const KEEP = 300 // samples on the charts: five minutes
  const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#65a30d', '#4b5563', '#ea580c']
  const config = document.body.dataset

  const byId = (id) => document.getElementById(id)

  function text (tag, value, className) {
    const el = document.createElement(tag)
    el.textContent = value
    if (className) el.className = className
    return el
  }

  function duration (ms) {
    const s = Math.floor(ms / 1000)
    if (s < 60) return s + ' s'
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s'
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min'
    return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h'
  }

  function bytes (n) {
    if (n < 1024) return n + ' B'
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + ' KiB'
    return (n / 1024 / 1024).toFixed(1) + ' MiB'
  }

  function ms (value) {
    return value === null ? '–' : (value < 10 ? value.toFixed(1) : Math.round(value)) + ' ms'
  }

  // A chart whose series (routes, close codes, statuses, nodes) appear as the server reports
  // them; a series missing from a sample counts as `missing` there.
  function LiveChart (id, missing) {
    this.el = byId(id)
    this.missing = missing
    this.times = []
    this.series = new Map()
    this.plot = null
  }

  LiveChart.prototype.push = function (time, values) {
    let added = false
    for (const key of Object.keys(values)) {
      if (!this.series.has(key)) {
        this.series.set(key, this.times.map(() => this.missing))
        added = true
      }
    }
    this.times.push(time / 1000)
    for (const [key, column] of this.series) column.push(key in values ? values[key] : this.missing)
    if (this.times.length > KEEP) {
      this.times.shift()
      for (const column of this.series.values()) column.shift()
    }
    const data = [this.times].concat(Array.from(this.series.values()))
    if (this.plot === null || added) this.draw(data)
    else this.plot.setData(data)
  }

  LiveChart.prototype.draw = function (data) {
    if (this.plot !== null) this.plot.destroy()
    const series = [{}]
    let i = 0
    for (const key of this.series.keys()) {
      series.push({ label: key, stroke: COLORS[i++ % COLORS.length], width: 2, points: { show: false } })
    }
    const Plot = window.uPlot
    this.plot = new Plot({
      width: Math.max(300, this.el.clientWidth),
      height: 220,
      series,
      scales: { x: { time: true }, y: { range: (_u, min, max) => [Math.min(0, min), Math.max(1, max)] } },
      legend: { live: false }
    }, data, this.el)
  }

  LiveChart.prototype.resize = function () {
    if (this.plot !== null) this.plot.setSize({ width: Math.max(300, this.el.clientWidth), height: 220 })
  }

  const charts = {
    connections: new LiveChart('chart-connections', 0),
    messages: new LiveChart('chart-messages', 0),
    latency: new LiveChart('chart-latency', null),
    closes: new LiveChart('chart-closes', 0),
    refused: new LiveChart('chart-refused', 0),
    drops: new LiveChart('chart-drops', 0),
    nodes: new LiveChart('chart-nodes', null)
  }
  window.addEventListener('resize', () => {
    for (const chart of Object.values(charts)) chart.resize()
  })

  let socket = null

  function disconnect (button, connectionId) {
    if (socket === null || socket.readyState !== WebSocket.OPEN) return
    socket.send(JSON.stringify({ type: 'disconnect', connectionId }))
    button.disabled = true
    button.textContent = 'Disconnecting…'
  }

  function renderRoutes (routes) {
    const rows = Object.keys(routes).sort().map((route) => {
      const r = routes[route]
      const tr = document.createElement('tr')
      tr.append(text('td', route), text('td', String(r.active), 'num'),
        text('td', r.messagesIn.toFixed(1), 'num'), text('td', r.messagesOut.toFixed(1), 'num'))
      return tr
    })
    byId('routes').tBodies[0].replaceChildren(...rows)
  }

  // Rows are kept by connection id and only their figures change, so a focused or pressed
  // button survives the next sample. The server lists connections oldest first: a row that is
  // new goes at the end.
  const rowsById = new Map()

  function connectionRow (c) {
    const tr = document.createElement('tr')
    tr.dataset.connectionId = c.id
    const button = text('button', 'Disconnect')
    button.type = 'button'
    button.addEventListener('click', () => disconnect(button, c.id))
    const action = document.createElement('td')
    action.append(button)
    const cells = { age: text('td', '', 'num'), latency: text('td', '', 'num'), buffered: text('td', '', 'num') }
    tr.append(text('td', c.id, 'id'), text('td', c.user === null ? '–' : c.user, 'user'), text('td', c.route),
      cells.age, cells.latency, cells.buffered, action)
    return { tr, cells }
  }

  function renderConnections (table) {
    const tbody = byId('connections').tBodies[0]
    const seen = new Set()
    for (const c of table.rows) {
      seen.add(c.id)
      let row = rowsById.get(c.id)
      if (row === undefined) {
        row = connectionRow(c)
        rowsById.set(c.id, row)
        tbody.append(row.tr)
      }
      row.cells.age.textContent = duration(c.age)
      row.cells.latency.textContent = ms(c.latency)
      row.cells.buffered.textContent = bytes(c.buffered)
    }
    for (const [id, row] of rowsById) {
      if (!seen.has(id)) {
        row.tr.remove()
        rowsById.delete(id)
      }
    }
    const more = byId('more')
    more.hidden = table.more === 0
    more.textContent = table.more === 0 ? '' : 'and ' + table.more + ' more, not listed'
  }

  function renderCluster (cluster, time) {
    byId('cluster').hidden = cluster === null
    byId('nodes-figure').hidden = cluster === null
    if (cluster === null) return
    byId('cluster-status').textContent = 'This node: ' + cluster.nodeId + (cluster.healthy ? ', connected to Redis' : ', Redis unreachable') +
      (cluster.complete ? '' : ' (node list incomplete)')
    const perNode = {}
    const rows = cluster.nodes.map((node) => {
      perNode[node.nodeId] = node.connections
      const tr = document.createElement('tr')
      tr.append(text('td', node.nodeId + (node.nodeId === cluster.nodeId ? ' (this node)' : '')),
        text('td', String(node.connections), 'num'), text('td', node.startedAt > 0 ? duration(time - node.startedAt) : '–'))
      return tr
    })
    byId('nodes').tBodies[0].replaceChildren(...rows)
    charts.nodes.push(time, perNode)
  }

  function render (sample) {
    byId('active').textContent = String(sample.active)
    byId('latency').textContent = ms(sample.latency.p50) + ' / ' + ms(sample.latency.p99)
    byId('viewers').textContent = String(sample.viewers)
    byId('sampled').textContent = new Date(sample.time).toLocaleTimeString()

    const active = {}
    const messages = {}
    for (const [route, r] of Object.entries(sample.routes)) {
      active[route] = r.active
      messages[route + ' in'] = r.messagesIn
      messages[route + ' out'] = r.messagesOut
    }
    const perSecond = (counts) => {
      const rates = {}
      for (const [key, n] of Object.entries(counts)) rates[key] = sample.interval > 0 ? n / sample.interval : 0
      return rates
    }
    charts.connections.push(sample.time, active)
    charts.messages.push(sample.time, messages)
    charts.latency.push(sample.time, { p50: sample.latency.p50, p99: sample.latency.p99 })
    charts.closes.push(sample.time, perSecond(sample.closes))
    charts.refused.push(sample.time, perSecond(sample.refused))
    charts.drops.push(sample.time, perSecond({ 'messages dropped': sample.drops.dropped, 'slow-consumer closes': sample.drops.slowConsumerCloses }))

    renderRoutes(sample.routes)
    renderCluster(sample.cluster, sample.time)
    renderConnections(sample.connections)
  }

  function setStatus (state, message) {
    const status = byId('status')
    status.dataset.state = state
    status.textContent = message
  }

  // The page's token (in its own address, already redacted from the server's logs) goes on to
  // the socket as a subprotocol entry, or in its query when subprotocols are not a token source.
  function open () {
    const token = config.tokenParam ? new URLSearchParams(window.location.search).get(config.tokenParam) : null
    const url = new URL(config.live, window.location.href)
    url.protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:'
    const protocols = [config.protocol]
    if (token) {
      if (config.tokenProtocolPrefix) protocols.push(config.tokenProtocolPrefix + token)
      else if (config.tokenQuery) url.searchParams.set(config.tokenQuery, token)
    }
    return new WebSocket(url.href, protocols)
  }

  let delay = 1000
  function connect () {
    setStatus('connecting', 'Connecting…')
    const ws = open()
    socket = ws
    ws.addEventListener('open', () => {
      delay = 1000
      setStatus('connected', 'Connected')
    })
    ws.addEventListener('message', (event) => {
      let sample
      try {
        sample = JSON.parse(event.data)
      } catch {
        return
      }
      if (sample !== null && sample.type === 'sample') render(sample)
    })
    ws.addEventListener('close', (event) => {
      if (socket === ws) socket = null
      const wait = Math.round(delay * (0.8 + Math.random() * 0.4))
      delay = Math.min(delay * 2, 30000)
      setStatus('disconnected', 'Disconnected (close code ' + event.code + '), reconnecting in ' + Math.ceil(wait / 1000) + ' s')
      setTimeout(connect, wait)
    })
  }

  connect()
})()
