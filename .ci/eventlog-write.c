/* Writes one event to a Windows event log with ReportEventW, as any program would:
 *   eventlog-write.exe SOURCE error|warning|information TEXT
 * .ci/windows runs it under Wine before asking the sensorhub's event log sensor what it saw. */
#include <windows.h>
#include <stdio.h>
#include <wchar.h>

int wmain(int argc, wchar_t **argv) {
    if (argc != 4) {
        fwprintf(stderr, L"usage: eventlog-write SOURCE error|warning|information TEXT\n");
        return 64;
    }
    WORD type;
    if (wcscmp(argv[2], L"error") == 0) type = EVENTLOG_ERROR_TYPE;
    else if (wcscmp(argv[2], L"warning") == 0) type = EVENTLOG_WARNING_TYPE;
    else if (wcscmp(argv[2], L"information") == 0) type = EVENTLOG_INFORMATION_TYPE;
    else {
        fwprintf(stderr, L"unknown type %ls\n", argv[2]);
        return 64;
    }
    HANDLE source = RegisterEventSourceW(NULL, argv[1]);
    if (source == NULL) {
        fwprintf(stderr, L"RegisterEventSourceW failed: %lu\n", GetLastError());
        return 1;
    }
    LPCWSTR strings[1] = {argv[3]};
    BOOL ok = ReportEventW(source, type, 0, 1000, NULL, 1, 0, strings, NULL);
    DWORD err = GetLastError();
    DeregisterEventSource(source);
    if (!ok) {
        fwprintf(stderr, L"ReportEventW failed: %lu\n", err);
        return 1;
    }
    return 0;
}
